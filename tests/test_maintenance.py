"""Health checks, token refresh and credential rotation: logic and flows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.exceptions import (
    InstanceNotFound,
    InstanceUnavailable,
    InvalidGrant,
    ValidationError,
)
from prefect_integrations.keyring import Keyring
from prefect_integrations.maintenance.connection_check import check_connection
from prefect_integrations.maintenance.health import HealthChecker, HealthReport
from prefect_integrations.oauth.endpoint import TokenEndpoint
from prefect_integrations.oauth.lifecycle import TokenLifecycle
from prefect_integrations.scope import Scope
from prefect_integrations.store import audit, instances, leases, status, vault

from .factories import make_instance
from .provider import FakeProvider, Reply

OK = Reply(200, {"id": 1, "name": "one"})


def _add(
    db: Database,
    registry: Registry,
    keyring: Keyring,
    instance_id: str,
    url: str,
    *,
    integration: str = "echo",
    state: str = "active",
    credentials: dict[str, Any] | None = None,
) -> None:
    with db.transaction() as s:
        make_instance(
            s,
            registry,
            keyring if credentials != {} else None,
            instance_id,
            integration,
            config={"base_url": f"{url}/{instance_id}"},
            credentials=None if credentials == {} else (credentials or {"apikey": {"key": "k"}}),
            status={"state": state},
            actor="t",
        )


def _status(db: Database, instance_id: str) -> dict[str, Any]:
    with db.transaction() as s:
        return instances.require_instance(s, instance_id).status


def _checker(db: Database, registry: Registry, keyring: Keyring, **kw: Any) -> HealthChecker:
    kw.setdefault("min_interval", 0.0)
    return HealthChecker(db, registry, keyring, actor="health", **kw)


def _run(checker: HealthChecker, **kw: Any) -> HealthReport:
    return asyncio.run(checker.run(**kw))


def test_health_outcomes_and_statuses(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    url = provider.url
    _add(echo_db, echo_registry, keyring, "healthy", url)
    _add(echo_db, echo_registry, keyring, "recovering", url, state="error")
    _add(echo_db, echo_registry, keyring, "revoked", url)
    _add(echo_db, echo_registry, keyring, "throttled", url)
    _add(echo_db, echo_registry, keyring, "broken", url)
    _add(echo_db, echo_registry, keyring, "nokeys", url, credentials={})
    _add(echo_db, echo_registry, keyring, "unchecked", url, integration="echo_nohealth")
    _add(echo_db, echo_registry, keyring, "disabled", url, state="inactive")
    for name in ("healthy", "recovering"):
        provider.reply("GET", f"/{name}/items/1", OK)
    provider.reply(
        "GET", "/revoked/items/1", Reply(401, {"error": {"code": "bad_key", "message": "revoked"}})
    )
    provider.reply("GET", "/throttled/items/1", Reply(429, {}, {"Retry-After": "30"}))
    provider.reply("GET", "/broken/items/1", Reply(503, {}))

    report = _run(_checker(echo_db, echo_registry, keyring))
    by_id = {r.instance_id: r for r in report.results}
    assert {k: v.reason for k, v in by_id.items()} == {
        "healthy": "ok",
        "recovering": "ok",
        "revoked": "provider_auth_failed",
        "throttled": "rate_limited",
        "broken": "provider_unavailable",
        "nokeys": "config_invalid",
        "unchecked": "not_applicable",
    }
    assert "disabled" not in by_id  # inactive instances are not checked
    assert _status(echo_db, "recovering")["state"] == "active"
    revoked = _status(echo_db, "revoked")
    assert revoked["state"] == "error" and revoked["details"]["reason"] == "provider_auth_failed"
    assert "HTTP 401" in revoked["error"] and revoked["lastChecked"]
    throttled = _status(echo_db, "throttled")
    assert throttled["state"] == "active" and throttled["details"]["reason"] == "rate_limited"
    assert _status(echo_db, "broken")["state"] == "error"
    assert _status(echo_db, "nokeys")["details"]["reason"] == "config_invalid"
    assert report.outages == {}
    summary = report.summary()
    assert summary["recovered"] == ["recovering"]
    assert sorted(summary["degraded"]) == ["broken", "nokeys", "revoked"]
    with echo_db.transaction() as s:
        rows = audit.tail(s, limit=100, action="health.check")
        leases = s.execute(
            sa.text(
                "SELECT count(*) FROM integration_instances "
                "WHERE maintenance_lease_owner IS NOT NULL"
            )
        ).scalar()
    assert sorted(r.instance_id or "" for r in rows) == sorted(by_id)
    assert leases == 0
    # nothing is due again within the minimum interval
    again = _run(_checker(echo_db, echo_registry, keyring, min_interval=3600))
    assert again.results == []


def test_an_unreadable_row_fails_alone_in_its_health_batch(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    """A row whose plaintext reads refuse is config_invalid; the rest of its batch is checked."""
    names = ["first", "poisoned", "last"]
    for name in names:
        _add(echo_db, echo_registry, keyring, name, provider.url)
        provider.reply("GET", f"/{name}/items/1", OK)
    with echo_db.transaction() as s:
        s.execute(
            sa.text(
                "UPDATE integration_instances SET credentials = jsonb_set(credentials, '{ct}', "
                "to_jsonb(encode(pgp_sym_encrypt(:pt, :k, :o), 'base64'))) "
                "WHERE instance_id = 'poisoned'"
            ),
            {
                "pt": '{"instance_id":"poisoned","credentials":{"apikey":{"key":"\\ud800abc"}}}',
                "k": keyring.primary.get_secret_value(),
                "o": vault.PGP_OPTIONS,
            },
        )

    report = _run(_checker(echo_db, echo_registry, keyring, batch_size=10))

    assert {r.instance_id: r.reason for r in report.results} == {
        "first": "ok",
        "poisoned": "config_invalid",
        "last": "ok",
    }
    poisoned = _status(echo_db, "poisoned")
    assert poisoned["state"] == "error" and "cannot be read" in poisoned["error"]


def test_provider_outage_is_reported_not_spread(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    for i in range(5):
        _add(echo_db, echo_registry, keyring, f"down_{i}", provider.url)
        provider.reply("GET", f"/down_{i}/items/1", Reply(503, {}))
    _add(echo_db, echo_registry, keyring, "down_ok", provider.url)
    provider.reply("GET", "/down_ok/items/1", OK)
    # another integration, one instance unreachable
    _add(echo_db, echo_registry, keyring, "lonely", _closed_url(), integration="echo_query")
    report = _run(_checker(echo_db, echo_registry, keyring))
    assert report.outages == {"echo": "provider_unavailable"}
    for i in range(5):
        status = _status(echo_db, f"down_{i}")
        assert status["state"] == "active"
        assert status["details"] == {
            "reason": "provider_unavailable",
            "outage": True,
            "status_code": 503,
            "last_error": status["details"]["last_error"],
        }
    lonely = _status(echo_db, "lonely")  # a single failure is not an outage
    assert lonely["state"] == "error" and lonely["details"]["reason"] == "network"


@pytest.mark.parametrize(
    ("failing", "working", "outage"),
    [
        pytest.param(2, 0, False, id="2-of-2-too-few"),
        pytest.param(3, 4, False, id="3-of-7-less-than-half"),
        pytest.param(3, 3, True, id="3-of-6-outage"),
    ],
)
def test_an_outage_needs_three_failing_instances_and_half_of_those_checked(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    provider: FakeProvider,
    failing: int,
    working: int,
    outage: bool,
) -> None:
    """The README's rule (defaults ``outage_min=3``, ``outage_share=0.5``).

    Otherwise each failing instance is marked ``error`` on its own.
    """
    for i in range(failing):
        _add(echo_db, echo_registry, keyring, f"down_{i}", provider.url)
        provider.reply("GET", f"/down_{i}/items/1", Reply(503, {}))
    for i in range(working):
        _add(echo_db, echo_registry, keyring, f"up_{i}", provider.url)
        provider.reply("GET", f"/up_{i}/items/1", OK)
    report = _run(_checker(echo_db, echo_registry, keyring))
    assert report.outages == ({"echo": "provider_unavailable"} if outage else {})
    states = {_status(echo_db, f"down_{i}")["state"] for i in range(failing)}
    assert states == ({"active"} if outage else {"error"})


def test_two_concurrent_sweeps_split_the_instances(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    ids = [f"inst_{i:02d}" for i in range(40)]
    for iid in ids:
        _add(echo_db, echo_registry, keyring, iid, provider.url)
        provider.reply("GET", f"/{iid}/items/1", OK)

    async def both() -> tuple[HealthReport, HealthReport]:
        first = _checker(echo_db, echo_registry, keyring, batch_size=5, min_interval=600)
        second = _checker(echo_db, echo_registry, keyring, batch_size=5, min_interval=600)
        a, b = await asyncio.gather(first.run(), second.run())
        return a, b

    a, b = asyncio.run(both())
    seen_a = [r.instance_id for r in a.results]
    seen_b = [r.instance_id for r in b.results]
    assert sorted(seen_a + seen_b) == ids  # every instance once, none twice
    assert seen_a and seen_b  # both runs did work
    assert len(provider.requests) == 40


def test_health_check_refreshes_tokens_first(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    """An OAuth instance whose token is about to expire is refreshed, not marked failed."""
    calls: list[str] = []

    class Recording(TokenLifecycle):
        def refresh(self, instance_id: str, **kw: Any) -> Any:
            calls.append(instance_id)
            with echo_db.transaction() as s:
                creds = vault.fetch_credentials(
                    s, keyring, instance_id, actor="t", purpose="t"
                ).reveal()
                instances.set_credentials(
                    s,
                    echo_registry,
                    keyring,
                    instance_id,
                    {
                        "oauth2": {
                            **creds["oauth2"],
                            "access_token": "fresh",
                            "expires_at": time.time() + 3600,
                            "obtained_at": time.time(),
                        }
                    },
                    actor="t",
                )
            return None

    with echo_db.transaction() as s:
        instances.create_instance(
            s,
            echo_registry,
            keyring,
            instance_id="oauthy",
            integration_id="echo_oauth",
            name="o",
            scope=Scope("global"),
            config={"base_url": f"{provider.url}/oauthy"},
            credentials={
                "oauth2": {
                    "access_token": "stale",
                    "refresh_token": "r",
                    "expires_at": time.time() + 5,
                    "obtained_at": time.time() - 3600,
                }
            },
            actor="t",
        )
    provider.reply("GET", "/oauthy/items/1", OK)
    lifecycle = Recording(echo_db, echo_registry, keyring, actor="t")
    report = _run(_checker(echo_db, echo_registry, keyring, lifecycle=lifecycle))
    assert [r.reason for r in report.results] == ["ok"] and calls == ["oauthy"]
    assert provider.requests[0].headers["authorization"] == "Bearer fresh"


def _closed_url() -> str:
    """The URL of a loopback port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------------------
# An operator's state set while a refresh or a check is in flight stands
# --------------------------------------------------------------------------------------


def _add_oauth(db: Database, registry: Registry, keyring: Keyring, instance_id: str) -> None:
    with db.transaction() as s:
        instances.create_instance(
            s,
            registry,
            keyring,
            instance_id=instance_id,
            integration_id="echo_oauth",
            name=instance_id,
            scope=Scope("global"),
            config={"base_url": "https://provider.invalid"},
            credentials={
                "oauth2": {
                    "client_id": "c",
                    "access_token": "old",
                    "refresh_token": "r1",
                    "expires_at": time.time() + 5,
                    "obtained_at": time.time() - 3600,
                }
            },
            actor="t",
        )


def _deactivate(db: Database, registry: Registry, instance_id: str) -> None:
    """What an operator does: set the instance inactive through the store."""
    with db.transaction() as s:
        instances.update_instance(
            s, registry, instance_id, status={"state": "inactive"}, actor="operator"
        )


@pytest.mark.parametrize("answer", ["token", "invalid_grant"])
def test_instance_set_inactive_during_a_refresh_stays_inactive(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, answer: str
) -> None:
    _add_oauth(echo_db, echo_registry, keyring, "paused")

    class DeactivatingEndpoint(TokenEndpoint):
        """Lets the operator act while the token request is in flight, then answers."""

        def refresh(self, refresh_token: str) -> dict[str, Any]:
            _deactivate(echo_db, echo_registry, "paused")
            if answer == "invalid_grant":
                raise InvalidGrant("refused", reason="invalid_grant")
            return {"access_token": "new", "refresh_token": "r2", "expires_in": 3600}

    lifecycle = TokenLifecycle(
        echo_db,
        echo_registry,
        keyring,
        actor="refresher",
        endpoint_factory=lambda d, i, c: DeactivatingEndpoint.for_instance(d, i.config, c),
    )
    if answer == "token":
        assert lifecycle.refresh("paused", force=True).result == "refreshed"
    else:
        with pytest.raises(InvalidGrant):
            lifecycle.refresh("paused", force=True)
    assert _status(echo_db, "paused") == {"state": "inactive"}
    with echo_db.transaction() as s:
        stored = vault.fetch_credentials(s, keyring, "paused", actor="t", purpose="t").reveal()
        last = audit.tail(s, action="oauth.refresh", limit=1)[0]
    if answer == "token":  # the rotated token is kept even though the status is not written
        assert stored["oauth2"]["access_token"] == "new"
        assert stored["oauth2"]["refresh_token"] == "r2"
    else:
        assert last.outcome == "failure" and last.details["status_written"] is False


def test_deactivation_ends_a_refresh_lease(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _add_oauth(echo_db, echo_registry, keyring, "leased")
    with echo_db.transaction() as s:
        version = leases.read_refresh_lease(s, "leased").credentials_version
        assert leases.claim_refresh_lease(s, "leased", version=version, seconds=300)
        assert leases.read_refresh_lease(s, "leased").held
    _deactivate(echo_db, echo_registry, "leased")
    with echo_db.transaction() as s:
        assert not leases.read_refresh_lease(s, "leased").held


def test_instance_set_inactive_during_a_health_check_stays_inactive(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _add(echo_db, echo_registry, keyring, "paused", "https://provider.invalid")
    _add(echo_db, echo_registry, keyring, "other", "https://provider.invalid")

    async def provider(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/paused/"):
            _deactivate(echo_db, echo_registry, "paused")
        return httpx.Response(401, json={"error": {"code": "bad_key", "message": "revoked"}})

    checker = _checker(echo_db, echo_registry, keyring, transport=httpx.MockTransport(provider))
    report = _run(checker)
    by_id = {r.instance_id: r for r in report.results}
    assert by_id["paused"].state_after == "inactive"
    assert by_id["other"].state_after == "error"  # the check's verdict where nothing changed
    assert _status(echo_db, "paused") == {"state": "inactive"}
    assert _status(echo_db, "other")["state"] == "error"
    assert report.summary()["degraded"] == ["other"]
    with echo_db.transaction() as s:
        released = s.execute(
            sa.text(
                "SELECT count(*) FROM integration_instances "
                "WHERE maintenance_lease_owner IS NULL AND last_checked_at IS NOT NULL"
            )
        ).scalar()
    assert released == 2


def test_the_status_writer_refuses_an_invalid_document(
    echo_db: Database, echo_registry: Registry, keyring: Keyring
) -> None:
    _add(echo_db, echo_registry, keyring, "valid", "https://provider.invalid")
    bad: list[dict[str, Any]] = [
        {"state": "paused"},
        {"state": "error", "unexpected": 1},
        {"error": "no state"},
    ]
    for document in bad:
        with pytest.raises(ValidationError), echo_db.transaction() as s:
            status.write_status(s, "valid", document, expected_state="active", reason="t")
        with pytest.raises(ValidationError), echo_db.transaction() as s:
            status.write_statuses(
                s,
                [status.StatusWrite("valid", document, expected_state="active", reason="t")],
                lease_owner="run",
            )
    assert _status(echo_db, "valid") == {"state": "active"}


def test_the_status_writer_is_conditional_and_emits_after_commit(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add(echo_db, echo_registry, keyring, "watched", "https://provider.invalid")
    emitted: list[tuple[str, str, str]] = []
    monkeypatch.setattr(
        status,
        "emit_instance_event",
        lambda name, inst, reason: emitted.append((name, inst.instance_id, reason)),
    )
    error = {"state": "error", "error": "broken"}
    with echo_db.transaction() as s:  # read as inactive, but it is active: not written
        assert not status.write_status(s, "watched", error, expected_state="inactive", reason="x")
    assert _status(echo_db, "watched") == {"state": "active"}
    with pytest.raises(RuntimeError), echo_db.transaction() as s:
        assert status.write_status(s, "watched", error, expected_state="active", reason="x")
        raise RuntimeError("rolled back")
    assert emitted == []  # nothing committed, nothing emitted
    with echo_db.transaction() as s:
        assert status.write_status(s, "watched", error, expected_state="active", reason="x")
        assert emitted == []  # not before the commit
    assert emitted == [("integration.instance.degraded", "watched", "x")]
    assert _status(echo_db, "watched") == error


def test_a_connection_is_tested_on_demand_and_a_fixed_instance_is_active_at_once(
    echo_db: Database, echo_registry: Registry, keyring: Keyring, provider: FakeProvider
) -> None:
    _add(echo_db, echo_registry, keyring, "fixed", provider.url, state="error")
    _add(echo_db, echo_registry, keyring, "still_bad", provider.url)
    _add(echo_db, echo_registry, keyring, "paused", provider.url, state="inactive")
    provider.reply("GET", "/fixed/items/1", OK)
    provider.reply("GET", "/still_bad/items/1", Reply(401, {"error": "revoked"}))

    fixed = check_connection(echo_db, echo_registry, keyring, "fixed", actor="operator")
    assert (fixed.reason, fixed.status_code, fixed.state_before, fixed.state_after) == (
        "ok",
        200,
        "error",
        "active",
    )
    assert fixed.duration_ms > 0 and _status(echo_db, "fixed")["state"] == "active"
    again = check_connection(echo_db, echo_registry, keyring, "fixed", actor="operator")
    assert again.reason == "ok"  # checked just now: an on-demand test is never "not due"

    bad = check_connection(echo_db, echo_registry, keyring, "still_bad", actor="operator")
    assert (bad.reason, bad.status_code, bad.state_after) == ("provider_auth_failed", 401, "error")
    assert _status(echo_db, "still_bad")["details"]["reason"] == "provider_auth_failed"

    with pytest.raises(InstanceUnavailable, match="'paused' is inactive"):
        check_connection(echo_db, echo_registry, keyring, "paused", actor="operator")
    with pytest.raises(InstanceNotFound):
        check_connection(echo_db, echo_registry, keyring, "missing", actor="operator")
    with echo_db.transaction() as s:
        checks = audit.tail(s, action="health.check", limit=10)
    assert sorted((c.instance_id, c.actor) for c in checks) == [
        ("fixed", "operator"),
        ("fixed", "operator"),
        ("still_bad", "operator"),
    ]
