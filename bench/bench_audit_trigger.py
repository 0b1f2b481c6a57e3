"""Where the chaining append trigger of revision 0008 spent its time, and what replaced it.

On a throwaway embedded cluster (durable unless --fast), each variant is a copy of
``integration_audit_log`` (``LIKE ... INCLUDING ALL``: columns, defaults, constraints,
indexes) with a BEFORE INSERT trigger whose body is that trigger's
(`audit_chain.function_bodies(..., chained=True)`) with one part changed; ``defaults``
is the log as it is now (its defaults number and stamp rows, no trigger; the sealer
chains them later). Two measurements:

1. The server's CPU per transaction: a procedure per copy inserts one row and commits,
   --loop times (no client, no round trip; its session does not wait for the flush at
   commit), best of the rounds. The cost of a part is the difference between the full
   body and the variant without it; the trigger function's own time per call comes from
   ``pg_stat_user_functions`` (``track_functions = 'pl'``).
2. The same single-row INSERTs as `bench_audit_append.py` (one transaction each,
   psycopg, prepared) from 1 and 16 writer processes (kept for the whole run), rounds
   alternated, medians as transactions per second and as a ratio to the plain table.

  plain        no trigger, the audit log's columns, primary key and instance index
  plain+index  plain with a ``(chain, seq)`` index too (the chains' extra index)
  full         revision 0008's trigger, unchanged
  no-hash      without the hash (``hash`` set to an empty bytea)
  no-to_char   the hash with ``occurred_at`` as jsonb writes a timestamp instead of
               ``to_char`` (see `hash_v3`: verifiable, with another Python formatter)
  json         ``json_build_array`` instead of ``jsonb_build_array`` (the same text)
  json+ts      both of the above
  no-try-loop  the chain by the backend's pid, locked waiting: no try-lock loop
  no-head      without reading the chain's last row (on a copy whose (chain, seq)
               index is not unique: every row is seq 1)
  concat       the hash over a length-prefixed concatenation instead of a JSON array
               (see `hash_concat`: verifiable, with another Python serializer)
  hash-only    the hash over the previous hash and the actor only: what the array's
               building and printing cost, apart from the hash function
  bare         a trigger that only sets id, time, role and constants: the cost of a
               PL/pgSQL row trigger by itself (non-unique (chain, seq) index)
  defaults     no trigger: the package's log, its id, time and role defaults and its
               partial (chain, seq) index (rows enter it when sealed)

Variants that stay verifiable are checked after the runs: every row's hash recomputed in
Python (`audit_chain.row_hash`, or `hash_v3`) must match the stored one.

    .venv/bin/python bench/bench_audit_trigger.py [--seconds S] [--rounds N]
        [--writers 1,16] [--variants full,json,...] [--loop N] [--fast]

``--writers ""`` runs only the first measurement, ``--loop 0`` only the second.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import psycopg
import sqlalchemy as sa
from _support import throwaway_database
from bench_audit_append import INSERT, PLAIN_TABLE, _conninfo

from prefect_integrations.store.audit_chain import (
    CHAIN_SETTING,
    CHAINS,
    LOCK_CLASS,
    function_bodies,
    hash_of,
    timestamp_text,
)

_TO_CHAR = "to_char(NEW.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_HEAD = (
    "SELECT l.seq, l.hash INTO s, h FROM {table} l\n"
    "   WHERE l.chain = c ORDER BY l.seq DESC LIMIT 1;"
)
_BARE = """
BEGIN
  NEW.db_role := current_user;
  NEW.id := nextval('{schema}.integration_audit_log_id_seq');
  NEW.occurred_at := clock_timestamp();
  NEW.version := 2;
  NEW.chain := pg_backend_pid() % {chains};
  NEW.seq := 1;
  NEW.hash := ''::bytea;
  RETURN NEW;
END
"""


def hash_v3(prev: bytes | None, row: Any) -> bytes:
    """The hash of a row of the ``no-to_char`` variant, in Python.

    jsonb writes a ``timestamp`` as ISO 8601 with a ``T``, trailing zeros of the fraction
    dropped, no zone: the text of ``occurred_at AT TIME ZONE 'UTC'`` under DateStyle ISO
    with the space replaced. `row_hash` keeps a timestamp it does not recognise as it is.
    """
    return _hash(prev, row, row.occurred_at.replace(" ", "T"))


# A serialization without JSON: each text field as ``<length>:<text>`` (``:`` for NULL,
# ``0:`` for an empty string), fields separated by ``,``, ``details`` (never NULL) last and
# as it is, so every row has one reading; the timestamp as the package formats it.
_CONCAT = """NEW.hash := sha256(coalesce(h, ''::bytea) || convert_to(concat(
      '3,', NEW.id, ',', NEW.chain, ',', NEW.seq, ',',
      {ts}, ',',
      length(NEW.actor), ':', NEW.actor, ',', length(NEW.db_role), ':', NEW.db_role, ',',
      length(NEW.action), ':', NEW.action, ',', length(NEW.instance_id), ':', NEW.instance_id,
      ',', length(NEW.integration_id), ':', NEW.integration_id, ',',
      length(NEW.outcome), ':', NEW.outcome, ',', NEW.details
    ), 'UTF8'));"""


def hash_concat(prev: bytes | None, row: Any) -> bytes:
    """The hash of a row of the ``concat`` variant, in Python."""

    def field(value: str | None) -> str:
        return ":" if value is None else f"{len(value)}:{value}"

    texts = (row.actor, row.db_role, row.action, row.instance_id, row.integration_id)
    text = ",".join(
        [
            "3",
            str(row.id),
            str(row.chain),
            str(row.seq),
            timestamp_text(row.occurred_at),
            *(field(t) for t in texts),
            field(row.outcome),
            row.details,
        ]
    )
    return hashlib.sha256((prev or b"") + text.encode("utf-8")).digest()


def _hash(prev: bytes | None, row: Any, occurred_at: str) -> bytes:
    return hash_of(prev, SimpleNamespace(**(row._asdict() | {"occurred_at": occurred_at})))


def _hash_v2(prev: bytes | None, row: Any) -> bytes:
    return _hash(prev, row, row.occurred_at)


def _replace(body: str, old: str, new: str) -> str:
    if old not in body:
        raise SystemExit(f"the trigger body no longer contains {old!r}: update this benchmark")
    return body.replace(old, new)


def _variants(schema: str) -> dict[str, tuple[str | None, bool, Callable[..., bytes] | None]]:
    """Per variant: its trigger body (None: no trigger), whether (chain, seq) is unique,
    and the Python hash its rows must match (None: not verifiable)."""
    real = function_bodies(schema, chained=True)["integration_audit_append()"]
    quoted = '"' + schema.replace('"', '""') + '"'
    full = _replace(real, f"{quoted}.integration_audit_log l", "{table} l")
    hash_start = full.index("NEW.hash := ")
    hash_end = full.index(";", full.index("'UTF8')", hash_start)) + 1
    no_lock_loop = (
        full[: full.index("  ELSE\n")] + f"  ELSE\n    c := pg_backend_pid() % {CHAINS};\n"
        f"    PERFORM pg_advisory_xact_lock({LOCK_CLASS}, c);\n"
        f"    PERFORM set_config('{CHAIN_SETTING}', c::text, true);\n"
        + full[full.index("  END IF;\n  SELECT") :]
    )
    ts = "NEW.occurred_at AT TIME ZONE 'UTC'"
    return {
        "plain": (None, False, None),
        "plain+index": (None, False, None),
        "full": (full, True, _hash_v2),
        "no-hash": (full[:hash_start] + "NEW.hash := ''::bytea;" + full[hash_end:], True, None),
        "no-to_char": (_replace(full, _TO_CHAR, ts), True, hash_v3),
        "json": (_replace(full, "jsonb_build_array(", "json_build_array("), True, _hash_v2),
        "json+ts": (
            _replace(_replace(full, _TO_CHAR, ts), "jsonb_build_array(", "json_build_array("),
            True,
            hash_v3,
        ),
        "no-try-loop": (no_lock_loop, True, _hash_v2),
        "no-head": (
            _replace(full, _HEAD.format(table="{table}"), "s := 0; h := NULL;"),
            False,
            None,
        ),
        "concat": (
            full[:hash_start] + _CONCAT.format(ts=_TO_CHAR) + full[hash_end:],
            True,
            hash_concat,
        ),
        "hash-only": (
            full[:hash_start]
            + "NEW.hash := sha256(coalesce(h, ''::bytea) || convert_to(NEW.actor, 'UTF8'));"
            + full[hash_end:],
            True,
            None,
        ),
        "bare": (_BARE.format(schema=quoted, chains=CHAINS), False, None),
        "defaults": (None, True, None),
    }


def _table(name: str) -> str:
    return "bench_" + name.replace("+", "_").replace("-", "_")


def _create(conn: psycopg.Connection[Any], name: str, body: str | None, unique: bool) -> str:
    table = _table(name)
    if name == "plain":
        conn.execute(PLAIN_TABLE)
        return table
    if name == "defaults":  # the package's log: its defaults, indexes, no trigger
        conn.execute(f"CREATE TABLE {table} (LIKE integration_audit_log INCLUDING ALL)")
        return table
    if body is None:  # plain+index
        conn.execute(PLAIN_TABLE.replace("bench_plain", table))
        conn.execute(f"CREATE INDEX {table}_chain ON {table} (chain, seq)")
        return table
    conn.execute(f"CREATE TABLE {table} (LIKE integration_audit_log INCLUDING ALL)")
    # the chaining trigger read a chain's head through the full (chain, seq) index of
    # revision 0008 (the log's is partial now: rows enter it when sealed)
    partial = conn.execute(
        "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = %s::regclass AND x.indisunique AND NOT x.indisprimary",
        (table,),
    ).fetchall()
    for (relname,) in partial:
        conn.execute(f'DROP INDEX "{relname}"')
    if unique:
        conn.execute(f"CREATE UNIQUE INDEX {table}_chain ON {table} (chain, seq)")
    else:
        conn.execute(f"CREATE INDEX {table}_chain ON {table} (chain, seq)")
    function = f"{table}_append"
    source = body.replace("{table}", table)
    conn.execute(
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $fn${source}$fn$"
    )
    conn.execute(
        f"CREATE TRIGGER {table}_append BEFORE INSERT ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()"
    )
    return table


def _worker(conninfo: dict[str, Any], n: int, jobs: Any, barrier: Any, out: Any) -> None:
    """One writer: for each job (table, seconds), warm up, wait for the others, insert."""
    params = (f"worker-{n}", f"xero_{n}", '{"purpose": "bench", "key_id": "k1"}')
    with psycopg.connect(autocommit=True, **conninfo) as conn:
        while (job := jobs.get()) is not None:
            table, seconds = job
            statement = INSERT.format(table=table)
            for _ in range(20):  # warm up: plans, the trigger's function cache
                conn.execute(statement, params, prepare=True)
            barrier.wait()
            deadline = time.monotonic() + seconds
            done = 0
            while time.monotonic() < deadline:
                conn.execute(statement, params, prepare=True)
                done += 1
            out.put(done)


class _Writers:
    """``count`` writer processes kept for every run (starting them is not timed)."""

    def __init__(self, conninfo: dict[str, Any], count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.count = count
        self.barrier = context.Barrier(count + 1)
        self.jobs = [context.Queue() for _ in range(count)]
        self.out = context.Queue()
        self.procs = [
            context.Process(target=_worker, args=(conninfo, n, q, self.barrier, self.out))
            for n, q in enumerate(self.jobs)
        ]
        for proc in self.procs:
            proc.start()

    def run(self, table: str, seconds: float) -> float:
        """Transactions per second of every writer inserting into ``table``."""
        for q in self.jobs:
            q.put((table, seconds))
        self.barrier.wait()
        done: int = sum(self.out.get() for _ in range(self.count))
        return done / seconds

    def close(self) -> None:
        for q in self.jobs:
            q.put(None)
        for proc in self.procs:
            proc.join()


_LOOP = """
CREATE PROCEDURE {table}_loop(n int) LANGUAGE plpgsql AS $fn$
BEGIN
  FOR i IN 1..n LOOP
    INSERT INTO {table} (actor, action, instance_id, integration_id, outcome, details)
    VALUES ('worker-0', 'credentials.decrypt', 'xero_0', 'xero', 'success',
            '{{"purpose": "bench", "key_id": "k1"}}'::jsonb);
    COMMIT;
  END LOOP;
END
$fn$
"""


def _loops(
    conninfo: dict[str, Any], tables: dict[str, str], n: int, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Server time per single-row transaction (best of ``rounds``) and trigger time per
    call, both in us, from a procedure that inserts and commits ``n`` times: no client,
    no round trip, commits not waiting for the flush; what is left is the server's CPU."""
    best: dict[str, float] = {}
    before = _function_times(conninfo)
    with psycopg.connect(autocommit=True, **conninfo) as conn:
        conn.execute("SET synchronous_commit = off")
        for table in tables.values():
            conn.execute(_LOOP.format(table=table))
            conn.execute(f"CALL {table}_loop(100)")  # warm up: plans, function caches
        names = list(tables)
        for r in range(rounds):  # interleaved rounds, each starting at another variant
            for name in names[r % len(names) :] + names[: r % len(names)]:
                table = tables[name]
                start = time.perf_counter()
                conn.execute(f"CALL {table}_loop({n})")
                took = (time.perf_counter() - start) / n * 1e6
                best[name] = min(best.get(name, took), took)
    after = _function_times(conninfo)
    trigger = {
        name: (after[f][1] - before.get(f, (0, 0.0))[1])
        / max(1, after[f][0] - before.get(f, (0, 0.0))[0])
        * 1000
        for name, table in tables.items()
        if (f := f"{table}_append") in after
    }
    return best, trigger


def _function_times(conninfo: dict[str, Any]) -> dict[str, tuple[int, float]]:
    """Calls and total milliseconds of each timed function, as the server counts them."""
    time.sleep(1.0)  # backends that just exited have flushed their counters by now
    with psycopg.connect(autocommit=True, **conninfo) as conn:
        rows = conn.execute(
            "SELECT funcname, calls, total_time FROM pg_stat_user_functions"
        ).fetchall()
    return {name: (int(calls), float(total)) for name, calls, total in rows}


def _check(
    conn: psycopg.Connection[Any], table: str, hasher: Callable[..., bytes]
) -> tuple[int, int]:
    """Rows of ``table`` whose hash or link the Python hash does not reproduce, and rows."""
    conn.execute("SET DateStyle = 'ISO, YMD'")
    bad = rows = 0
    cursor = conn.cursor(name=f"check_{table}", row_factory=psycopg.rows.namedtuple_row)
    with conn.transaction(), cursor as cur:
        cur.execute(
            f"SELECT id, version, chain, seq, (occurred_at AT TIME ZONE 'UTC')::text AS "
            f"occurred_at, actor, db_role, action, instance_id, integration_id, outcome, "
            f"details::text AS details, prev_hash, hash FROM {table} ORDER BY chain, seq"
        )
        last: dict[int, bytes | None] = {}
        row: Any
        for row in cur:
            rows += 1
            prev = None if row.prev_hash is None else bytes(row.prev_hash)
            if hasher(prev, row) != bytes(row.hash) or last.get(row.chain) != prev:
                bad += 1
            last[row.chain] = bytes(row.hash)
    return bad, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writers", default="1,16")
    parser.add_argument("--variants", default="", help="comma-separated (default: all)")
    parser.add_argument("--fast", action="store_true", help="fsync off (CPU only)")
    parser.add_argument(
        "--loop", type=int, default=3000, help="transactions per round of the server-side loop"
    )
    args = parser.parse_args()
    counts = [int(w) for w in args.writers.split(",") if w]
    with throwaway_database(durable=not args.fast) as (database, _scratch):
        with database.transaction() as s:
            schema = str(s.execute(sa.text("SELECT current_schema()")).scalar_one())
        variants = _variants(schema)
        wanted = [v for v in args.variants.split(",") if v] or list(variants)
        unknown = sorted(set(wanted) - set(variants))
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {', '.join(variants)}")
        if "plain" not in wanted:
            wanted.insert(0, "plain")
        conninfo = _conninfo(database.url)
        tables: dict[str, str] = {}
        with psycopg.connect(autocommit=True, **conninfo) as conn:
            # the writers' connections time each PL/pgSQL function (pg_stat_user_functions)
            conn.execute(f"ALTER DATABASE {conninfo['dbname']} SET track_functions = 'pl'")
            for name in wanted:
                body, unique, _ = variants[name]
                tables[name] = _create(conn, name, body, unique)
        loop: tuple[dict[str, float], dict[str, float]] | None = None
        if args.loop > 0:
            loop = _loops(conninfo, tables, args.loop, max(args.rounds, 3))
        results: dict[int, dict[str, float]] = {}
        trigger_us: dict[int, dict[str, float]] = {}
        for writers in counts:
            before = _function_times(conninfo)
            pool = _Writers(conninfo, writers)
            runs: dict[str, list[float]] = {name: [] for name in wanted}
            try:
                for r in range(args.rounds):  # interleaved rounds: noise hits all alike
                    # each round starts at another variant: no variant always runs right
                    # after a checkpoint or always last
                    for name in wanted[r % len(wanted) :] + wanted[: r % len(wanted)]:
                        runs[name].append(pool.run(tables[name], args.seconds))
            finally:
                pool.close()
            results[writers] = {name: statistics.median(r) for name, r in runs.items()}
            after = _function_times(conninfo)
            trigger_us[writers] = {
                name: (after[f][1] - before.get(f, (0, 0.0))[1])
                / max(1, after[f][0] - before.get(f, (0, 0.0))[0])
                * 1000
                for name in wanted
                if (f := f"{tables[name]}_append") in after
            }
        checks: dict[str, tuple[int, int]] = {}
        with psycopg.connect(autocommit=True, **conninfo) as conn:
            for name in wanted:
                hasher = variants[name][2]
                if hasher is not None:
                    checks[name] = _check(conn, tables[name], hasher)
    mode = "fsync off" if args.fast else "durable (fsync on)"
    if loop is not None:
        _print_loop(*loop, args.loop, max(args.rounds, 3))
    if not counts:
        return
    print(f"cluster: {mode}; {args.rounds} rounds x {args.seconds:g} s per variant, medians")
    print("tps: transactions per second; trigger: us per call of the trigger function")
    print("(pg_stat_user_functions, all rounds); delta: 1/tps - 1/tps of full, us per txn")
    first = counts[0]
    header = f"{'variant':<12}"
    for w in counts:
        header += f"  {f'{w}w tps':>8} {'/plain':>6} {'trigger':>7}"
    print(header + f"  {f'delta {first}w':>9}  verified in Python")
    full_first = results[first].get("full")
    for name in wanted:
        line = f"{name:<12}"
        for w in counts:
            tps = results[w][name]
            us = trigger_us[w].get(name)
            trigger = "-" if us is None else f"{us:.1f}"
            line += f"  {tps:>8.0f} {tps / results[w]['plain']:>5.2f}x {trigger:>7}"
        delta = f"{(1 / results[first][name] - 1 / full_first) * 1e6:+.1f}" if full_first else ""
        line += f"  {delta:>9}"
        if name in checks:
            bad, rows = checks[name]
            line += f"  {'yes' if bad == 0 else 'NO'} ({rows - bad}/{rows} rows)"
        print(line)


def _print_loop(best: dict[str, float], trigger: dict[str, float], n: int, rounds: int) -> None:
    plain, full = best["plain"], best.get("full")
    print(
        f"server-side loop: {n} single-row transactions per round, best of {rounds}; "
        "us per transaction (server CPU, commits not waiting for the flush)"
    )
    print(f"{'variant':<12}  {'us/txn':>7}  {'vs plain':>8}  {'vs full':>8}  {'trigger us':>10}")
    for name, us in best.items():
        vs_full = "" if full is None else f"{us - full:+.1f}"
        calls = trigger.get(name)
        print(
            f"{name:<12}  {us:>7.1f}  {us - plain:>+8.1f}  {vs_full:>8}  "
            f"{'-' if calls is None else f'{calls:.1f}':>10}"
        )
    print()


if __name__ == "__main__":
    main()
