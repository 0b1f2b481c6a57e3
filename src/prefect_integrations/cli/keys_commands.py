"""`prefect-integrations keys ...`: encryption keys."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_integrations.cli._common import Runtime, echo, echo_table, emit_json, runtime
from prefect_integrations.cli._progress import progress, shown
from prefect_integrations.keyring import Keyring, dev_keyring_path, generate_key, parse_keyring
from prefect_integrations.store import key_checks, key_registry, rekey

app = typer.Typer(help="Encryption keys.", no_args_is_help=True)


@app.command()
def generate(
    kid: Annotated[str, typer.Option("--kid", help="Key id")] = "k1",
) -> None:
    """Print a new keyring entry 'KID:BASE64' (32 random bytes) for PREFECT_INTEGRATIONS_KEYS.

    Put the new entry first to make it the primary key; keep older keys after it until
    every row is re-encrypted.
    """
    entry = f"{kid}:{generate_key()}"
    parse_keyring(entry, source="--kid")  # checks the key id
    echo(entry)


def _count_rows(
    counts: dict[str, int], keyring: Keyring, registered: dict[str, str] | None
) -> list[list[object]]:
    """Rows of KEY ID / INSTANCES / IN KEYRING / PRIMARY (/ REGISTERED), keyring keys at 0."""
    kids = sorted(set(counts) | set(keyring.ids))
    return [
        [
            kid,
            counts.get(kid, 0),
            "yes" if kid in keyring.ids else "NO",
            "yes" if kid == keyring.primary_id else "",
            *([] if registered is None else [registered.get(kid, "")]),
        ]
        for kid in kids
    ]


def _echo_counts(
    counts: dict[str, int], keyring: Keyring, registered: dict[str, str] | None = None
) -> None:
    headers = ["KEY ID", "INSTANCES", "IN KEYRING", "PRIMARY"]
    if registered is not None:
        headers.append("REGISTERED")
    echo_table(headers, _count_rows(counts, keyring, registered))


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show how many instances' credentials are encrypted under each key id.

    REGISTERED says whether the key registry holds this keyring's key under the id
    (``yes``), another key (``another key``: maintenance workers with this keyring are
    refused) or nothing yet (``no``; see `keys register`). Names key ids and counts only,
    never key material.
    """
    rt = runtime()
    keyring = rt.keyring
    with rt.transaction("count credentials per key id") as session:
        counts = key_checks.count_keys(session, keyring)
        registered = key_registry.registration(session, keyring)
    to_rotate = counts.total - counts.by_key.get(keyring.primary_id, 0)
    if as_json:
        emit_json(
            {
                "primary": keyring.primary_id,
                "keyring": keyring.ids,
                **counts.as_dict(),
                "to_rotate": to_rotate,
                "registered": registered,
            }
        )
        return
    echo(f"keyring: {len(keyring.ids)} key(s), primary '{keyring.primary_id}'")
    _echo_counts(counts.by_key, keyring, registered)
    echo(
        f"{counts.total} instance(s) with credentials; {to_rotate} not under the primary "
        f"key '{keyring.primary_id}'; {counts.unknown} under a key id not in the keyring"
    )


@app.command()
def rotate(
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=1_000_000, help="Rows per transaction")
    ] = 5000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Re-encrypt every stored credential to the primary key, online, in batches.

    First registers the primary key in the key registry (refused when its id is
    registered with another key), so maintenance workers are held to this keyring's
    primary key. Each batch is one short transaction; rows in use elsewhere are skipped and retried,
    and an interrupted run is simply run again. Credentials still stored in the flat shape
    of earlier versions (envelope v1) are rewritten in the specification's shape. Prints
    the instances per key id before and after, how many were upgraded, what failed
    (instance ids and reasons) and the verification of every row, then what to keep: the
    primary key always, older keys until a run completes with 0 failures. Exits 1 if any
    row failed or does not verify. On a terminal, a progress bar on standard error counts
    the rows re-encrypted.
    """
    rt = runtime()
    keyring = rt.keyring
    # The operator's primary key becomes the one workers must hold (see `keys register`);
    # refused, before anything is re-encrypted, when its id is registered with another key.
    with rt.transaction("register the primary key") as session:
        key_registry.register(session, keyring, [keyring.primary_id], actor=rt.actor)
    total: int | None = None
    if shown(not as_json):  # the bar's total: the rows not under the primary key
        with rt.transaction("count credentials per key id") as session:
            counts = key_checks.count_keys(session, keyring)
        total = counts.total - counts.by_key.get(keyring.primary_id, 0)
    with progress("re-encrypting", total=total, enabled=not as_json) as advance:
        report = rekey.rotate_keys(
            rt.db, keyring, actor=rt.actor, batch_size=batch_size, on_batch=advance
        )
    if as_json:
        emit_json(report.as_dict())
    else:
        _echo_report(report, keyring)
    _remind(rt, keyring, report)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def register(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Register every key of this keyring whose id is not registered yet.

    The registry records each key id's fingerprint (an HMAC of a fixed label under the
    key, never the key): a maintenance worker whose keyring holds another key under a
    registered id, or a primary key nobody registered while the credentials are under
    other keys, refuses to run. Run it where the operator's keyring is. Refused, and
    nothing registered, when a key id is registered with another key: the message names
    the id. Prints the key ids registered now and those registered before.
    """
    rt = runtime()
    keyring = rt.keyring
    with rt.transaction("register keys") as session:
        added = key_registry.register(session, keyring, keyring.ids, actor=rt.actor)
    already = [kid for kid in keyring.ids if kid not in added]
    if as_json:
        emit_json({"registered": added, "already_registered": already})
        return
    if added:
        echo(f"registered: {', '.join(added)}")
    if already:
        echo(f"already registered: {', '.join(already)}")


def _remind(rt: Runtime, keyring: Keyring, report: rekey.RotationReport) -> None:
    """What to keep and what may go, on standard error (``--json`` output stays clean)."""
    if rt.settings.keys is not None:
        where = "PREFECT_INTEGRATIONS_KEYS"
    else:
        where = f"the development keyring file {dev_keyring_path(rt.settings)}"
    older = ", ".join(f"'{kid}'" for kid in keyring.ids[1:])
    if not report.ok:
        echo(
            f"reminder: keep every key ({where}) until `keys rotate` completes with 0 "
            "failures; rows that failed are still encrypted under an older key",
            err=True,
        )
        return
    echo(
        f"reminder: keep the primary key '{keyring.primary_id}' ({where}): every "
        "credential is encrypted under it, and nothing can read them without it",
        err=True,
    )
    if older:
        echo(
            f"reminder: older keys ({older}) may be dropped from the keyring now, because "
            "this rotation completed with 0 failures; drop a key only after such a run",
            err=True,
        )


def _echo_report(report: rekey.RotationReport, keyring: Keyring) -> None:
    echo(f"primary key: '{report.primary}'")
    echo("before:")
    _echo_counts(report.before, keyring)
    echo(
        f"rotated: {report.rotated} instance(s) in {report.batches} batch(es), "
        f"{report.seconds:.1f} s"
    )
    echo(f"upgraded: {report.upgraded} instance(s) to the specification's credentials shape")
    echo(f"failed: {len(report.failed)}")
    if report.failed:
        echo_table(["INSTANCE", "REASON"], [list(f) for f in report.failed])
    echo("after:")
    _echo_counts(report.after, keyring)
    echo(f"verified: {report.verified} ok, {len(report.problems)} problem(s)")
    failed = set(report.failed)
    extra = [p for p in report.problems if p not in failed]
    if extra:
        echo_table(["INSTANCE", "PROBLEM"], [list(p) for p in extra])
