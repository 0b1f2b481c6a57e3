"""Cost of fetching and decrypting one instance's credentials (P1).

Compares, in one run against the same row of a throwaway embedded cluster:
  baseline  a plain single-row SELECT of the instance row, in its own transaction
  fetch     `vault.fetch_credentials` in its own transaction: pgcrypto decrypt, instance
            binding check and the audit row (through the chains' append trigger), in one
            statement
and, for reference, what makes up the difference:
  +insert   the baseline's SELECT and one INSERT into an unchained table with the audit
            log's columns, in one transaction: the floor of any transaction that writes
            (on a durable cluster, one WAL flush at commit)
  +audit    the baseline's SELECT and one audit row (the append trigger), no decrypt
  async     `fetch_credentials` with ``SET LOCAL synchronous_commit = off``: the commit
            does not wait for the WAL flush (what the flush costs `fetch`)
  load      what a client does before a call (`IntegrationClient`'s load): in one
            transaction, `instances.require_instance` (the instance and its definition)
            and then `fetch_credentials`
Target: fetch / baseline <= 1.6 on the durable cluster.

All are measured on a durable cluster (fsync on, the embedded default), where the audit
row makes `fetch` pay one WAL flush at commit that the read-only baseline does not, and
again with fsync off (the database's flush left out of the comparison). Rounds alternate
the sides; medians of the rounds' mean time per operation are reported, and each
round's fetch / baseline (its sides ran back to back, so less exposed to a busy machine).

    .venv/bin/python bench/bench_vault.py [--rounds N] [--per-round N] [--mode fast|durable|both]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import sqlalchemy as sa
from _support import throwaway_database
from bench_audit_append import PLAIN_TABLE

from prefect_integrations.definitions import load_registry
from prefect_integrations.keyring import generate_key, parse_keyring
from prefect_integrations.scope import Scope
from prefect_integrations.store import audit, instances, vault
from prefect_integrations.store.audit import AuditAction
from prefect_integrations.store.definitions import sync_definitions
from prefect_integrations.store.instances import require_instance

TARGET = 1.6


def _time(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--mode", choices=["fast", "durable", "both"], default="both")
    args = parser.parse_args()
    modes = {"fast": [False], "durable": [True], "both": [True, False]}[args.mode]
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
            s.execute(sa.text(PLAIN_TABLE))
        select = sa.text("SELECT * FROM integration_instances WHERE instance_id = :iid")
        insert = sa.text(
            "INSERT INTO bench_plain (actor, action, instance_id, integration_id, outcome, "
            "details) VALUES ('bench', 'credentials.decrypt', :iid, 'xero', 'success', "
            """'{"purpose": "bench", "key_id": "k1"}')"""
        )
        no_flush_wait = sa.text("SET LOCAL synchronous_commit = off")

        def baseline() -> None:
            with database.transaction() as s:
                s.execute(select, {"iid": "xero_42"}).one()

        def plus_insert() -> None:
            with database.transaction() as s:
                s.execute(select, {"iid": "xero_42"}).one()
                s.execute(insert, {"iid": "xero_42"})

        def plus_audit() -> None:
            with database.transaction() as s:
                s.execute(select, {"iid": "xero_42"}).one()
                audit.record(
                    s,
                    action=AuditAction.CREDENTIALS_DECRYPT,
                    actor="bench",
                    instance_id="xero_42",
                    integration_id="xero",
                    details={"purpose": "bench", "key_id": "k1"},
                )

        def fetch() -> None:
            with database.transaction() as s:
                vault.fetch_credentials(s, keyring, "xero_42", actor="bench", purpose="bench")

        def fetch_async() -> None:
            with database.transaction() as s:
                s.execute(no_flush_wait)
                vault.fetch_credentials(s, keyring, "xero_42", actor="bench", purpose="bench")

        def load() -> None:
            with database.transaction() as s:
                require_instance(s, "xero_42")
                vault.fetch_credentials(s, keyring, "xero_42", actor="bench", purpose="call")

        sides: dict[str, tuple[str, Callable[[], None]]] = {
            "baseline": ("plain single-row SELECT", baseline),
            "fetch": ("decrypt + bind check + audit", fetch),
            "+insert": ("SELECT + unchained INSERT", plus_insert),
            "+audit": ("SELECT + audit row", plus_audit),
            "async": ("fetch, commit without flush wait", fetch_async),
            "load": ("instance + fetch (a client)", load),
        }
        for _, fn in sides.values():
            _time(fn, 200)  # warm up pool and caches
        runs: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(rounds):  # interleaved rounds: noise hits every side alike
            for name, (_, fn) in sides.items():
                runs[name].append(_time(fn, per_round))
    medians = {name: statistics.median(r) for name, r in runs.items()}
    base = medians["baseline"]
    ratio = medians["fetch"] / base
    mode = "durable (fsync on)" if durable else "fsync off"
    verdict = ("OK" if ratio <= TARGET else "OVER TARGET") if durable else "reference"
    print(f"cluster: {mode}; {rounds} rounds x {per_round} ops, medians (range of rounds)")
    for name, (what, _) in sides.items():
        r = runs[name]
        print(
            f"{name:<9} {what:<33} {medians[name] * 1e6:8.1f} us/op "
            f"({min(r) * 1e6:6.0f}-{max(r) * 1e6:<6.0f}) {medians[name] / base:6.2f}x"
        )
    print(f"ratio     fetch / baseline {ratio:.2f}x (target <= {TARGET}x: {verdict})")
    # each round's sides ran back to back: their ratio is less exposed to a busy machine
    ratios = sorted(f / b for f, b in zip(runs["fetch"], runs["baseline"], strict=True))
    floor = [f / i for f, i in zip(runs["fetch"], runs["+insert"], strict=True)]
    print(
        f"rounds    fetch / baseline {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f}x); fetch / +insert median "
        f"{statistics.median(floor):.2f}x"
    )


if __name__ == "__main__":
    main()
