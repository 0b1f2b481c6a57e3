"""Cost of rotating the encryption key of every stored credential.

On a throwaway embedded cluster (fsync off), with N instances whose credentials are
encrypted under ``k1`` exactly as `vault.store_credentials` writes them (envelope
``{"v", "kid", "ct", "meta"}``, plaintext bound to the instance id), compares:

  baseline  the bare re-encryption run in the same batches as rotate_keys: per batch one
            transaction with one ``UPDATE integration_instances SET credentials = <ct
            re-encrypted to k2>, key_id = 'k2'`` of the next ``--batch-size`` rows in id
            order (decrypt with the known key, no key lookup, no checks, no audit)
  rotate    `rekey.rotate_keys` with the keyring ``k2,k1``: batches of
            ``--batch-size`` rows in id order, each one statement and one transaction
            with ``FOR UPDATE SKIP LOCKED``, key lookup per row, instance-binding check,
            audit row per batch; then its verification pass over every row, whose share
            is reported apart (the batches alone are compared with the baseline too)
  one       (for reference) the same bare UPDATE of every row in one statement and one
            transaction; the baseline's difference from it is what walking the table in
            id-ordered batches with a commit each costs by itself

All start from the same state: the k1 credentials are restored from a copy table and
the table is rewritten (VACUUM FULL) and checkpointed before each measurement. Autovacuum
is off for the table during all of them (``--autovacuum`` keeps it on): cleaning up the
old row versions is the same work after each, but the single UPDATE leaves all of it for
after its timing while autovacuum starts on committed batches mid-run. Rounds alternate
the three; medians are reported. Target: rotate_keys / baseline <= 1.3, judged for the
whole call and for its batches alone (the call less its verification pass, whose share is
reported apart).

    .venv/bin/python bench/bench_rotation.py [--rows N] [--batch-size N] [--rounds N]
        [--token-size N] [--autovacuum]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import sqlalchemy as sa
from _support import throwaway_database

from prefect_integrations.credentials import credentials_metadata, to_iso
from prefect_integrations.db import Database
from prefect_integrations.definitions import load_registry
from prefect_integrations.keyring import generate_key, parse_keyring
from prefect_integrations.store import rekey, vault
from prefect_integrations.store.definitions import sync_definitions

TARGET = 1.3

# The plaintext is built exactly as vault.store_credentials builds it:
# json.dumps({"instance_id": iid, "credentials": values}, separators=(",", ":")).
_SETUP = sa.text(
    """
    INSERT INTO integration_instances (instance_id, integration_definition_id, name, context_type,
                                       config, status, credentials, key_id,
                                       token_expires_at, credentials_version)
    SELECT g.iid, (SELECT id FROM integration_definitions WHERE integration_id = 'xero'),
           'Xero ' || g.n, 'global', '{"tenant_id": "t"}',
           '{"state": "active"}',
           jsonb_build_object(
             'v', CAST(:v AS integer),
             'kid', 'k1',
             'ct', encode(pgp_sym_encrypt(
                     '{"instance_id":' || to_json(g.iid)::text
                       || ',"credentials":' || CAST(:values AS text) || '}',
                     CAST(:key AS text), CAST(:opts AS text)), 'base64'),
             'meta', CAST(:meta AS jsonb)),
           'k1', to_timestamp(CAST(:expires AS bigint)), 1
      FROM (SELECT n, 'xero_' || n AS iid FROM generate_series(1, CAST(:rows AS integer)) n) g
    """
)

_BARE_UPDATE = sa.text(
    """
    UPDATE integration_instances SET
      credentials = credentials || jsonb_build_object(
        'kid', 'k2',
        'ct', encode(pgp_sym_encrypt(
                pgp_sym_decrypt(decode(credentials->>'ct', 'base64'), CAST(:old AS text)),
                CAST(:new AS text), CAST(:opts AS text)), 'base64')),
      key_id = 'k2'
    WHERE credentials IS NOT NULL
    """
)

_BARE_BATCH = sa.text(
    """
    WITH b AS (
      SELECT id FROM integration_instances
       WHERE key_id IS DISTINCT FROM 'k2' AND credentials IS NOT NULL
         AND id > CAST(:after AS uuid)
       ORDER BY id LIMIT CAST(:batch AS integer))
    UPDATE integration_instances i SET
      credentials = i.credentials || jsonb_build_object(
        'kid', 'k2',
        'ct', encode(pgp_sym_encrypt(
                pgp_sym_decrypt(decode(i.credentials->>'ct', 'base64'), CAST(:old AS text)),
                CAST(:new AS text), CAST(:opts AS text)), 'base64')),
      key_id = 'k2'
    FROM b WHERE i.id = b.id
    RETURNING i.id
    """
)


def _bare_batches(database: Database, params: dict[str, Any], batch_size: int) -> None:
    after = uuid.UUID(int=0)
    while True:
        with database.transaction() as s:
            ids = s.execute(_BARE_BATCH, {**params, "after": after, "batch": batch_size})
            done = max(ids.scalars(), default=None)
        if done is None:
            return
        after = done


def _reset(database: Database) -> None:
    """Restore the k1 credentials, rewrite the table and checkpoint (untimed)."""
    with database.connect("reset") as conn:
        conn.execute(
            sa.text(
                "UPDATE integration_instances i SET credentials = s.credentials, "
                "key_id = s.key_id FROM bench_snapshot s WHERE s.id = i.id "
                "AND i.key_id IS DISTINCT FROM s.key_id"
            )
        )
    with database.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sa.text("VACUUM FULL ANALYZE integration_instances"))
        conn.execute(sa.text("CHECKPOINT"))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--token-size", type=int, default=1200, help="characters of the access token"
    )
    parser.add_argument("--autovacuum", action="store_true", help="leave autovacuum on")
    args = parser.parse_args()

    with throwaway_database() as (database, _scratch):
        with database.transaction() as s:
            sync_definitions(s, load_registry(), actor="bench")
        old_key, new_key = generate_key(), generate_key()
        k1 = parse_keyring(f"k1:{old_key}")
        rotated_ring = parse_keyring(f"k2:{new_key},k1:{old_key}")
        expires = 1_900_000_000
        values: dict[str, Any] = {
            "oauth2": {
                "access_token": "a" * args.token_size,
                "refresh_token": "r" * 64,
                "token_type": "Bearer",
                "expires_at": to_iso(expires),
            }
        }
        started = time.perf_counter()
        with database.transaction() as s:
            s.execute(
                _SETUP,
                {
                    "v": vault.ENVELOPE_VERSION,
                    "values": json.dumps(values, separators=(",", ":")),
                    "key": old_key,
                    "opts": vault.PGP_OPTIONS,
                    "meta": json.dumps(credentials_metadata(values)),
                    "expires": expires,
                    "rows": args.rows,
                },
            )
            s.execute(
                sa.text(
                    "CREATE TABLE bench_snapshot AS "
                    "SELECT id, credentials, key_id FROM integration_instances"
                )
            )
            if not args.autovacuum:
                s.execute(
                    sa.text(
                        "ALTER TABLE integration_instances SET (autovacuum_enabled = false, "
                        "toast.autovacuum_enabled = false)"
                    )
                )
            size = s.execute(
                sa.text("SELECT pg_size_pretty(pg_total_relation_size('integration_instances'))")
            ).scalar_one()
        print(
            f"setup: {args.rows} instances under k1 in {time.perf_counter() - started:.1f} s "
            f"(table {size}; access token {args.token_size} chars)"
        )
        with database.transaction() as s:  # the bulk rows read like any stored credentials
            creds = vault.fetch_credentials(s, k1, "xero_1", actor="bench", purpose="bench")
            assert creds.reveal() == values

        params = {"old": old_key, "new": new_key, "opts": vault.PGP_OPTIONS}
        runs: dict[str, list[float]] = {"one": [], "batched": [], "rotate": [], "verify": []}
        report: rekey.RotationReport | None = None
        for round_no in range(1, args.rounds + 1):
            _reset(database)
            start = time.perf_counter()
            _bare_batches(database, params, args.batch_size)
            runs["batched"].append(time.perf_counter() - start)

            _reset(database)
            start = time.perf_counter()
            report = rekey.rotate_keys(
                database, rotated_ring, actor="bench", batch_size=args.batch_size
            )
            runs["rotate"].append(time.perf_counter() - start)
            runs["verify"].append(report.verify_seconds)
            assert report.rotated == args.rows and report.ok, report.as_dict()

            _reset(database)
            start = time.perf_counter()
            with database.transaction() as s:
                s.execute(_BARE_UPDATE, params)
            runs["one"].append(time.perf_counter() - start)
            print(
                f"round {round_no}: baseline (batched) {runs['batched'][-1]:.2f} s, "
                f"rotate_keys {runs['rotate'][-1]:.2f} s ({report.batches} batches; "
                f"verification {report.verify_seconds:.2f} s), one UPDATE {runs['one'][-1]:.2f} s"
            )
        assert report is not None
        base, rot, one = (statistics.median(runs[k]) for k in ("batched", "rotate", "one"))
        verify = statistics.median(runs["verify"])
        loop = statistics.median(r - v for r, v in zip(runs["rotate"], runs["verify"], strict=True))
        verdict = "OK" if rot / base <= TARGET else "OVER TARGET"
        print(
            f"rows         {args.rows}, batch size {args.batch_size}, autovacuum "
            f"{'on' if args.autovacuum else 'off'}; medians of {args.rounds} round(s), "
            "ratios to the baseline"
        )
        print(f"baseline     bare UPDATE in the same batches  {base:7.2f} s")
        print(
            f"rotate_keys  the whole call                   {rot:7.2f} s {rot / base:5.2f}x  "
            f"target <= {TARGET}x: {verdict}"
        )
        print(
            f"  of which   the batches (and counts)         {loop:7.2f} s {loop / base:5.2f}x  "
            f"target <= {TARGET}x: {'OK' if loop / base <= TARGET else 'OVER TARGET'}"
        )
        print(
            f"  of which   verification of every row        {verify:7.2f} s {verify / base:5.2f}x"
            f"  ({verify / rot:.0%} of the call)"
        )
        print(f"reference    one bare UPDATE of every row     {one:7.2f} s {one / base:5.2f}x")
        rounds = [r / b for r, b in zip(runs["rotate"], runs["batched"], strict=True)]
        print(f"rounds       rotate_keys / baseline {', '.join(f'{r:.2f}x' for r in rounds)}")
        print(f"verified     {report.verified} rows, {len(report.problems)} problems")
        print(f"after        {report.after}")


if __name__ == "__main__":
    main()
