"""Throughput of refreshing expiring OAuth2 tokens vs the raw token endpoint.

Against the test authorization server (oidc-provider on loopback, tests/oauth_server),
in one run:

  raw      N client-credentials token requests straight to the token endpoint (httpx,
           W threads), measured before and after the other side (the better run counts)
  refresh  N instances whose tokens expire within the lead time, refreshed through
           `TokenLifecycle.refresh_many` (W threads): read and decrypt, lease claim,
           token request, compare-and-swap write, audit, per instance

Reports refresh / raw throughput (target: at least 0.5) and the number of token requests
the server saw during the refresh (must equal N: no duplicates, none skipped).
The client-credentials grant is used so that every instance has its own valid grant.

    .venv/bin/python bench/bench_refresh.py [--instances N] [--workers W]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _support import throwaway_database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.definitions import ITEMS_API
from tests.oauth import start_oauth_server

M2M = {
    **ITEMS_API,
    "integrationId": "benchm2m",
    "oauth2Config": {
        **ITEMS_API["oauth2Config"],
        "grantType": "client_credentials",
        "scopes": ["items.read"],
        "tokenEndpointAuthMethod": "client_secret_basic",
        "additionalParameters": {},
    },
}


def _raw(token_url: str, client_id: str, secret: str, n: int, workers: int) -> float:
    def one(_: int) -> None:
        with httpx.Client(timeout=30) as client:  # a fresh client, as the refresh uses
            response = client.post(
                token_url,
                data={"grant_type": "client_credentials", "scope": "items.read"},
                auth=(client_id, secret),
            )
            response.raise_for_status()
            assert response.json()["access_token"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    from prefect_integrations.definitions import load_registry
    from prefect_integrations.keyring import generate_key, parse_keyring
    from prefect_integrations.oauth.lifecycle import RefreshOutcome, TokenLifecycle
    from prefect_integrations.scope import Scope
    from prefect_integrations.store import instances
    from prefect_integrations.store.definitions import sync_definitions

    with throwaway_database(pool_size=args.workers + 2) as (db, home):
        folder = home / "definitions"
        folder.mkdir()
        (folder / "benchm2m.json").write_text(json.dumps(M2M))
        registry = load_registry([folder])
        keyring = parse_keyring(f"k1:{generate_key()}")
        with start_oauth_server(
            redirect_uris=["http://127.0.0.1:8765/callback"], tmp_path=home / "oauth"
        ) as server:
            n = args.instances
            now = time.time()
            with db.transaction() as s:
                sync_definitions(s, registry, actor="bench")
                for i in range(n):
                    instances.create_instance(
                        s,
                        registry,
                        keyring,
                        instance_id=f"m2m_{i}",
                        integration_id="benchm2m",
                        name=f"m2m {i}",
                        scope=Scope("global"),
                        config={"base_url": server.issuer, "token_url": server.token_url},
                        credentials={
                            "oauth2": {
                                "access_token": "expiring",
                                "obtained_at": now - 3590,
                                "expires_at": now + 10,
                                "client_id": server.m2m_client_id,
                                "client_secret": server.m2m_client_secret,
                            }
                        },
                        actor="bench",
                    )
            secret = server.m2m_client_secret
            _raw(server.token_url, server.m2m_client_id, secret, 100, args.workers)  # warm up
            raw_before = _raw(server.token_url, server.m2m_client_id, secret, n, args.workers)

            lifecycle = TokenLifecycle(db, registry, keyring, actor="bench")
            server.reset_stats()
            started = time.perf_counter()
            outcomes = lifecycle.refresh_many([f"m2m_{i}" for i in range(n)], workers=args.workers)
            ours = n / (time.perf_counter() - started)
            requests = server.stats()["token_requests"]

            raw_after = _raw(server.token_url, server.m2m_client_id, secret, n, args.workers)
        raw = max(raw_before, raw_after)
        refreshed = sum(isinstance(o, RefreshOutcome) and o.result == "refreshed" for o in outcomes)
        ratio = ours / raw
        print(f"{n} instances, {args.workers} workers")
        print(f"raw token endpoint   {raw_before:8.1f} / {raw_after:8.1f} req/s (before / after)")
        print(f"refresh_many         {ours:8.1f} instances/s   refreshed {refreshed}/{n}")
        print(
            f"ratio                {ratio:8.2f}  (target >= 0.5)  "
            f"{'OK' if ratio >= 0.5 else 'UNDER TARGET'}"
        )
        print(
            f"token requests       {requests} for {n} instances  "
            f"{'OK' if requests == n else 'MISMATCH'}"
        )


if __name__ == "__main__":
    main()
