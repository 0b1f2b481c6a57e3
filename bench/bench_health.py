"""Health-check sweep throughput vs raw async httpx against the same local server.

In one run, against one HTTP server in another process (uvicorn, 127.0.0.1):

  raw    N GET requests with one `httpx.AsyncClient` and C concurrent requests, measured
         before and after the sweep (the better run counts)
  sweep  `HealthChecker.run` over N instances (apikey, healthCheck = a GET): claim in
         batches, decrypt each batch in one statement, C concurrent checks, write every
         status and audit row per batch

Reports sweep / raw throughput (target: at least 0.5).

    .venv/bin/python bench/bench_health.py [--instances N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import time
from typing import Any

import httpx
from _support import throwaway_database

DEFINITION = {
    "integrationId": "benchhealth",
    "name": "Bench health",
    "description": "A local provider for the health benchmark.",
    "version": "1.0.0",
    "authType": "apikey",
    "baseUrl": "http://127.0.0.1:1",
    "auth": {"apikey": {"in": "header", "name": "X-Api-Key"}},
    "configSchema": {
        "type": "object",
        "properties": {"base_url": {"type": "string", "format": "uri"}},
        "additionalProperties": False,
    },
    "healthCheck": {"method": "whoami", "input": {}},
    "methods": [
        {
            "id": "whoami",
            "name": "Who am I",
            "description": "The account of the key.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
            "outputSchema": {"type": "object", "required": ["account"]},
            "http": {
                "method": "GET",
                "path": "/whoami",
                "output": {"account": "{{ response.account }}"},
            },
        }
    ],
}
BODY = json.dumps({"account": "bench", "plan": "free"}).encode()


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def _serve(port: int) -> None:
    import uvicorn

    uvicorn.run(_app, host="127.0.0.1", port=port, log_level="error", access_log=False)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _raw(url: str, n: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            async with gate:
                response = await client.get(f"{url}/whoami", headers={"X-Api-Key": "k"})
                response.raise_for_status()
                response.json()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    port = _port()
    server = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/whoami", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)

    from prefect_integrations.definitions import load_registry
    from prefect_integrations.keyring import generate_key, parse_keyring
    from prefect_integrations.maintenance.health import HealthChecker
    from prefect_integrations.scope import Scope
    from prefect_integrations.store import instances
    from prefect_integrations.store.definitions import sync_definitions

    try:
        with throwaway_database(pool_size=10) as (db, home):
            folder = home / "definitions"
            folder.mkdir()
            (folder / "benchhealth.json").write_text(json.dumps(DEFINITION))
            registry = load_registry([folder])
            keyring = parse_keyring(f"k1:{generate_key()}")
            n = args.instances
            with db.transaction() as s:
                sync_definitions(s, registry, actor="bench")
                for i in range(n):
                    instances.create_instance(
                        s,
                        registry,
                        keyring,
                        instance_id=f"h_{i}",
                        integration_id="benchhealth",
                        name=f"h {i}",
                        scope=Scope("global"),
                        config={"base_url": url},
                        credentials={"apikey": {"key": f"key-{i}"}},
                        actor="bench",
                    )
            asyncio.run(_raw(url, 500, args.concurrency))  # warm up
            raw_before = asyncio.run(_raw(url, n, args.concurrency))
            checker = HealthChecker(
                db,
                registry,
                keyring,
                actor="bench",
                min_interval=0,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
            )
            started = time.perf_counter()
            report = asyncio.run(checker.run())
            sweep = len(report.results) / (time.perf_counter() - started)
            raw_after = asyncio.run(_raw(url, n, args.concurrency))
            raw = max(raw_before, raw_after)
            ratio = sweep / raw
            print(f"{n} instances, concurrency {args.concurrency}, batches of {args.batch_size}")
            print(f"raw async httpx   {raw_before:8.1f} / {raw_after:8.1f} req/s (before / after)")
            print(f"health sweep      {sweep:8.1f} instances/s   results {report.counts()}")
            print(
                f"ratio             {ratio:8.2f}  (target >= 0.5)  "
                f"{'OK' if ratio >= 0.5 else 'UNDER TARGET'}"
            )

    finally:
        server.terminate()


if __name__ == "__main__":
    main()
