"""Cost of fetching and decrypting one instance's credentials.

Compares, in one run against the same row of a throwaway embedded cluster:
  baseline  a plain single-row SELECT of the instance row, in its own transaction
  fetch     `vault.fetch_credentials` in its own transaction: pgcrypto decrypt, instance
            binding check and the audit row, in one statement
Target: fetch / baseline <= 1.6.

Both are measured on a cluster with fsync off (the database's flush is not what is being
compared) and again on a durable cluster (the embedded default), where the audit row makes
`fetch` pay one WAL flush at commit that the read-only baseline does not.

    .venv/bin/python bench/bench_vault.py [--rounds N] [--per-round N] [--mode fast|durable|both]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import sqlalchemy as sa
from _support import throwaway_database

from prefect_integrations.definitions import load_registry
from prefect_integrations.keyring import generate_key, parse_keyring
from prefect_integrations.scope import Scope
from prefect_integrations.store import instances, vault
from prefect_integrations.store.definitions import sync_definitions

TARGET = 1.6


def _time(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=500)
    parser.add_argument("--mode", choices=["fast", "durable", "both"], default="both")
    args = parser.parse_args()
    modes = {"fast": [False], "durable": [True], "both": [False, True]}[args.mode]
    for durable in modes:
        measure(rounds=args.rounds, per_round=args.per_round, durable=durable)


def measure(*, rounds: int, per_round: int, durable: bool) -> None:
    """Measure both sides on a fresh cluster and print medians and the ratio."""

    with throwaway_database(durable=durable) as (database, _scratch):
        registry = load_registry()
        keyring = parse_keyring(f"k1:{generate_key()}")
        with database.transaction() as s:
            sync_definitions(s, registry, actor="bench")
            for i in range(100):
                instances.create_instance(
                    s,
                    registry,
                    keyring,
                    instance_id=f"xero_{i}",
                    integration_id="xero",
                    name=f"Xero {i}",
                    scope=Scope("global"),
                    config={"tenant_id": "t"},
                    credentials={
                        "oauth2": {
                            "access_token": "a" * 1200,
                            "refresh_token": "r" * 64,
                            "expires_at": 1_900_000_000,
                        }
                    },
                    actor="bench",
                )
        select = sa.text("SELECT * FROM integration_instances WHERE instance_id = :iid")

        def baseline() -> None:
            with database.transaction() as s:
                s.execute(select, {"iid": "xero_42"}).one()

        def fetch() -> None:
            with database.transaction() as s:
                vault.fetch_credentials(s, keyring, "xero_42", actor="bench", purpose="bench")

        for fn in (baseline, fetch):
            _time(fn, 200)  # warm up pool and caches
        base_runs, fetch_runs = [], []
        for _ in range(rounds):  # interleaved rounds: noise hits both sides alike
            base_runs.append(_time(baseline, per_round))
            fetch_runs.append(_time(fetch, per_round))
        base = statistics.median(base_runs)
        cost = statistics.median(fetch_runs)
        ratio = cost / base
        mode = "durable (fsync on)" if durable else "fsync off"
        print(f"cluster: {mode}; {rounds} rounds x {per_round} ops, medians")
        print(f"baseline  plain single-row SELECT      {base * 1e6:8.1f} us/op")
        print(f"fetch     decrypt + bind check + audit {cost * 1e6:8.1f} us/op")
        print(
            f"ratio     fetch / baseline             {ratio:8.2f}x  (target <= {TARGET}x)"
            f"  {'OK' if ratio <= TARGET else 'OVER TARGET'}"
        )


if __name__ == "__main__":
    main()
