"""Audit append throughput with concurrent writers, against the same INSERTs unchained.

Compares, in one run on a durable embedded cluster (fsync on: each commit is flushed):
  plain   single-row INSERTs, one transaction each, into ``bench_plain``: the audit
          log's columns, its primary key and its instance index, no trigger
  audit   the same INSERTs into ``integration_audit_log``: the append trigger numbers
          and stamps the row; chaining it is the sealer's work, later
with 1, 4, 8 and 16 writers, each a process with its own connection (psycopg, no ORM,
so the client costs the same on both sides). Rounds alternate the two sides; medians of
transactions per second are reported. Target: audit / plain >= 0.8 at 16 writers.

Then the sealer (`audit_seal.seal_pending`) chains every row the audit side appended,
timed, and `audit verify` checks them: the rows per second the sealer keeps up with,
against the append rate it must follow.

    .venv/bin/python bench/bench_audit_append.py [--seconds S] [--rounds N] [--writers 1,4,8,16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

import psycopg
import sqlalchemy as sa
from _support import throwaway_database

from prefect_integrations.store.audit_seal import seal_pending
from prefect_integrations.store.audit_verify import verify

TARGET = 0.8
TARGET_WRITERS = 16

PLAIN_TABLE = """
CREATE TABLE bench_plain (
  id bigserial PRIMARY KEY,
  occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  actor text NOT NULL,
  db_role text NOT NULL DEFAULT current_user,
  action text NOT NULL,
  instance_id varchar(255),
  integration_id varchar(255),
  outcome varchar(20) NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
  details jsonb NOT NULL DEFAULT '{}'::jsonb,
  prev_hash bytea,
  hash bytea,
  version smallint,
  chain smallint,
  seq bigint
);
CREATE INDEX bench_plain_instance ON bench_plain (instance_id, id);
"""
INSERT = (
    "INSERT INTO {table} (actor, action, instance_id, integration_id, outcome, details) "
    "VALUES (%s, 'credentials.decrypt', %s, 'xero', 'success', %s::jsonb)"
)


def _conninfo(url: str) -> dict[str, Any]:
    parsed = sa.make_url(url)
    query = {k: v[-1] if isinstance(v, tuple) else v for k, v in parsed.query.items()}
    return {"dbname": parsed.database, "user": parsed.username, **query}


def _writer(
    conninfo: dict[str, Any], table: str, n: int, ready: Any, start: Any, seconds: float, out: Any
) -> None:
    statement = INSERT.format(table=table)
    with psycopg.connect(autocommit=True, **conninfo) as conn:
        params = (f"worker-{n}", f"xero_{n}", '{"purpose": "bench", "key_id": "k1"}')
        for _ in range(20):  # warm up: connection, plans, the trigger's function cache
            conn.execute(statement, params, prepare=True)
        ready.release()
        start.wait()
        deadline = time.monotonic() + seconds
        done = 0
        while time.monotonic() < deadline:
            conn.execute(statement, params, prepare=True)
            done += 1
        out.put(done)


def _run(conninfo: dict[str, Any], table: str, writers: int, seconds: float) -> float:
    """Transactions per second of ``writers`` processes inserting for ``seconds``."""
    context = multiprocessing.get_context("spawn")
    ready, start, out = context.Semaphore(0), context.Event(), context.Queue()
    procs = [
        context.Process(target=_writer, args=(conninfo, table, n, ready, start, seconds, out))
        for n in range(writers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire()
    start.set()
    total: int = sum(out.get() for _ in procs)
    for proc in procs:
        proc.join()
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", default="1,4,8,16")
    args = parser.parse_args()
    counts = [int(w) for w in args.writers.split(",")]
    with throwaway_database(durable=True) as (database, _scratch):
        with database.transaction() as s:
            s.execute(sa.text(PLAIN_TABLE))
        conninfo = _conninfo(database.url)
        results: dict[int, tuple[float, float]] = {}
        for writers in counts:
            plain_runs, audit_runs = [], []
            for _ in range(args.rounds):  # interleaved rounds: noise hits both sides alike
                plain_runs.append(_run(conninfo, "bench_plain", writers, args.seconds))
                audit_runs.append(_run(conninfo, "integration_audit_log", writers, args.seconds))
            results[writers] = (statistics.median(plain_runs), statistics.median(audit_runs))
        started = time.perf_counter()
        sealed = seal_pending(database)
        sealing = time.perf_counter() - started
        with database.transaction() as s:
            report = verify(s)
        if not report.ok or report.unsealed or report.rows != sealed.rows:
            raise SystemExit(f"the sealed log does not verify: {report.as_dict()}")
    print(
        f"cluster: durable (fsync on); {args.rounds} rounds x {args.seconds:g} s per side, medians"
    )
    print(f"{'writers':>7}  {'plain tps':>10}  {'audit tps':>10}  {'audit/plain':>11}")
    for writers, (plain, audit) in results.items():
        ratio = audit / plain
        verdict = ""
        if writers == TARGET_WRITERS:
            verdict = f"  (target >= {TARGET}x) {'OK' if ratio >= TARGET else 'UNDER TARGET'}"
        print(f"{writers:>7}  {plain:>10.0f}  {audit:>10.0f}  {ratio:>10.2f}x{verdict}")
    print(
        f"sealer: {sealed.rows} rows chained in {sealing:.1f} s = {sealed.rows / sealing:.0f} "
        f"rows/s ({sealed.rows / sealing / max(r[1] for r in results.values()):.1f}x the "
        f"fastest append rate above); verified"
    )


if __name__ == "__main__":
    main()
