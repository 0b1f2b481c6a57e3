"""Throughput and memory of `audit verify` over a large audit log.

On a throwaway embedded cluster (fsync off: only reads are timed), the audit log is
filled through the real append trigger with ``INSERT ... SELECT ... generate_series``,
one transaction per slice of rows, then sealed by the package's sealer
(`audit_seal.seal_pending`; its rate is printed too). Rows vary like real ones: actions,
actors, instance ids, ``details`` of several shapes, some with non-ASCII text and
characters JSON escapes. Then, at --rows / 10 rows and again at --rows rows, compares:

  read    the statement `verify` runs, streamed through the same server-side cursor
          (``yield_per``), every row fetched and dropped: the cost of reading the log
  verify  `audit_verify.verify`: the triggers and functions, then every row's hash
          recomputed in Python and each chain's links, gaps and order checked

and reports rows per second (medians of --rounds), verify / read, and the Python
process's peak memory during `verify`: the peak of tracemalloc (in a separate, untimed
pass: tracing slows Python down) and the growth of the peak resident set (VmHWM, reset
before the pass through ``/proc/self/clear_refs``). Memory is constant in the log's size
when the peaks at both sizes are about the same.

    .venv/bin/python bench/bench_audit_verify.py [--rows N] [--rounds N] [--slice N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from _support import throwaway_database

from prefect_integrations.db import Database
from prefect_integrations.store import audit_verify
from prefect_integrations.store.audit_seal import seal_pending

# Rows like the package writes: decrypts, calls, refreshes, management changes.
_FILL = sa.text(
    """
    INSERT INTO integration_audit_log (actor, action, instance_id, integration_id, outcome,
                                       details)
    SELECT CASE WHEN n % 5 = 0 THEN 'worker-' || (n % 16) ELSE 'flow-run/' || (n % 97) END,
           (ARRAY['credentials.decrypt', 'method.call', 'oauth.refresh', 'health.check',
                  'instance.update'])[1 + n % 5],
           CASE WHEN n % 50 = 0 THEN NULL ELSE 'xero_' || (n % 1000) END,
           'xero',
           CASE WHEN n % 23 = 0 THEN 'failure' ELSE 'success' END,
           CASE n % 5
             WHEN 0 THEN jsonb_build_object('purpose', 'call', 'key_id', 'k1')
             WHEN 1 THEN jsonb_build_object('method_id', 'list_invoices', 'status_code', 200,
                                            'attempts', 1, 'duration_ms', n % 997 + 0.125,
                                            'flow_run_id', md5(n::text))
             WHEN 2 THEN jsonb_build_object('reason', 'expiring', 'version', n)
             WHEN 3 THEN jsonb_build_object('status', 'ok', 'message',
                                            E'Zürich "ok"\\t\\u00e9 ' || n)
             ELSE jsonb_build_object('fields', jsonb_build_array('name', 'config'))
           END
      FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) n
    """
)


def _fill(database: Database, first: int, last: int, slice_rows: int) -> float:
    """Append rows ``first``..``last`` through the trigger, a slice per transaction, then
    seal them; returns the seconds the sealing took."""
    start = first
    while start <= last:
        end = min(start + slice_rows - 1, last)
        with database.transaction() as s:
            s.execute(_FILL, {"first": start, "last": end})
        start = end + 1
    started = time.perf_counter()
    seal_pending(database)
    return time.perf_counter() - started


def _read(database: Database) -> int:
    """Stream the rows `verify` reads, as it reads them, and drop them."""
    rows = 0
    with database.transaction() as s:
        for _row in audit_verify._rows(s, None):  # the statement and cursor verify uses
            rows += 1
    return rows


def _verify(database: Database) -> int:
    with database.transaction() as s:
        report = audit_verify.verify(s)
    if not report.ok:
        raise SystemExit(f"the log does not verify: {report.as_dict()['problems'][:5]}")
    return report.rows


def _rate(fn: Callable[[Database], int], database: Database) -> float:
    start = time.perf_counter()
    rows = fn(database)
    return rows / (time.perf_counter() - start)


_STATUS = Path("/proc/self/status")


def _hwm_kib() -> int | None:
    """The process's peak resident set (VmHWM) in KiB, where Linux reports it."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set
    except OSError:
        return False
    return True


_Memory = tuple[float, float | None, float | None]


def _memory(database: Database) -> _Memory:
    """During `verify`, in MiB: the peak of traced Python memory, the peak resident set
    of the process and how far it rose above the resident set at the start (None where
    Linux does not report it)."""
    rss: float | None = None
    growth: float | None = None
    if _reset_hwm() and (before := _hwm_kib()) is not None:
        _verify(database)
        after = _hwm_kib()
        if after is not None:
            rss, growth = after / 1024, (after - before) / 1024
    tracemalloc.start()  # apart: its own bookkeeping would count in the resident set
    try:
        _verify(database)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20, rss, growth


def _measure(database: Database, rounds: int) -> tuple[float, float, _Memory]:
    """Medians of read and verify rows/s, then the memory of a verify pass."""
    _read(database)  # warm: the table in the server's cache, the cursor's plan
    reads, verifies = [], []
    for _ in range(rounds):  # interleaved rounds: noise hits both sides alike
        reads.append(_rate(_read, database))
        verifies.append(_rate(_verify, database))
    return statistics.median(reads), statistics.median(verifies), _memory(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slice", type=int, default=10_000, help="rows appended per transaction")
    args = parser.parse_args()
    if args.rows < 10 or args.slice < 1 or args.rounds < 1:
        parser.error("--rows must be at least 10, --slice and --rounds at least 1")
    sizes = [args.rows // 10, args.rows]
    with throwaway_database() as (database, _scratch):
        with database.transaction() as s:
            existing = s.execute(sa.text("SELECT count(*) FROM integration_audit_log")).scalar_one()
        filled = existing
        results: list[tuple[int, float, float, _Memory]] = []
        for size in sizes:
            started = time.perf_counter()
            sealing = _fill(database, filled + 1, size, args.slice)
            with database.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(sa.text("VACUUM ANALYZE integration_audit_log"))
                count, chains, table = conn.execute(
                    sa.text(
                        "SELECT count(*), count(DISTINCT chain), "
                        "pg_size_pretty(pg_total_relation_size('integration_audit_log')) "
                        "FROM integration_audit_log"
                    )
                ).one()
            print(
                f"filled to {count} rows in {chains} chains ({size - filled} appended and "
                f"sealed in {time.perf_counter() - started:.1f} s, the sealing "
                f"{sealing:.1f} s = {(size - filled) / sealing:.0f} rows/s; table {table})"
            )
            filled = size
            results.append((count, *_measure(database, args.rounds)))
    print(f"medians of {args.rounds} rounds; memory of this Python process during verify")
    print(
        f"{'rows':>9}  {'read rows/s':>11}  {'verify rows/s':>13}  {'verify/read':>11}  "
        f"{'traced peak':>11}  {'peak RSS':>10}  {'RSS rise':>9}"
    )
    for rows, read, ver, (peak, rss, growth) in results:
        print(
            f"{rows:>9}  {read:>11.0f}  {ver:>13.0f}  {read / ver:>10.2f}x  "
            f"{peak:>7.1f} MiB  {_mib(rss):>10}  {_mib(growth):>9}"
        )
    (small, *_, (small_peak, small_rss, _)), (large, *_, (large_peak, large_rss, _)) = results
    ratios = f"traced {large_peak / small_peak:.2f}x"
    if small_rss and large_rss:
        ratios += f", resident {large_rss / small_rss:.2f}x"
    print(f"peak memory at {large} rows / at {small} rows: {ratios}")


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MiB"


if __name__ == "__main__":
    main()
