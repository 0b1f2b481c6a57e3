"""The maintenance summaries as text: what the flows log and the CLI prints."""

from __future__ import annotations

from prefect_integrations.maintenance.health import HealthReport, HealthResult
from prefect_integrations.maintenance.refresh import RefreshReport
from prefect_integrations.maintenance.summaries import (
    credential_rotation_text,
    health_text,
    key_rotation_text,
    refresh_text,
    summary_text,
)
from prefect_integrations.store.rekey import RotationReport


def _result(instance_id: str, reason: str, before: str, after: str) -> HealthResult:
    return HealthResult(
        instance_id=instance_id,
        integration_id="xero",
        reason=reason,
        state_before=before,
        state_after=after,
    )


def test_a_health_sweep_reads_as_a_sentence() -> None:
    report = HealthReport(
        run_id="r1",
        results=[
            _result("a", "ok", "active", "active"),
            _result("b", "ok", "error", "active"),
            _result("c", "ok", "active", "active"),
            _result("d", "provider_auth_failed", "active", "error"),
            _result("e", "provider_auth_failed", "error", "error"),
        ],
    )
    assert health_text(report.summary()) == (
        "checked 5 instances: 3 ok, 2 provider_auth_failed; no outage; "
        "1 degraded (d); 1 recovered (b)"
    )
    report.outages = {"slack": "network", "gmail": "provider_unavailable"}
    assert "; provider outage: gmail (provider_unavailable), slack (network);" in health_text(
        report.summary()
    )
    assert health_text(HealthReport(run_id="r2").summary()) == "checked 0 instances (none due)"


def test_long_id_lists_are_cut() -> None:
    results = [_result(f"i{n}", "network", "active", "error") for n in range(8)]
    text = health_text(HealthReport(run_id="r", results=results).summary())
    assert text.endswith("8 degraded (i0, i1, i2, i3, i4 and 3 more)")
    assert text.startswith("checked 8 instances: 8 network;")


def test_a_token_refresh_reads_as_a_sentence() -> None:
    report = RefreshReport(
        candidates=3,
        outcomes={"a": "refreshed", "b": "refreshed", "c": "failed"},
        failures={"c": "invalid_grant"},
    )
    assert refresh_text(report.summary()) == (
        "3 tokens expiring: 2 refreshed, 1 failed; failed: c (invalid_grant)"
    )
    assert refresh_text(RefreshReport().summary()) == "no token expiring"


def test_a_rotation_reads_as_a_sentence_in_either_shape() -> None:
    report = RotationReport(
        rotated=2,
        failed=[("x", "undecryptable")],
        before={"k1": 3},
        after={"k1": 1, "k2": 2},
        primary="k2",
    )
    expected = "2 re-encrypted, 1 failed; per key id k1 3 -> k1 1, k2 2; failed: x (undecryptable)"
    assert key_rotation_text(report.as_dict()) == expected
    summary = {
        "keys": {
            "rotated": 2,
            "failed": dict(report.failed),
            "before": report.before,
            "after": report.after,
        },
        "provider": {"a": "rotated", "b": "not_applicable", "c": "not_applicable"},
    }
    assert credential_rotation_text(summary) == (
        f"keys: {expected}; provider credentials: 2 not_applicable, 1 rotated"
    )
    assert summary_text("rotate-credentials", summary) == credential_rotation_text(summary)
