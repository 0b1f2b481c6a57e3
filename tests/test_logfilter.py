"""The log filter that masks decrypted credential values in log records."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from prefect_integrations import logfilter
from prefect_integrations.masking import secret_strings


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    saved = dict(logfilter._secrets)
    logfilter._secrets.clear()
    logfilter._pattern = None
    yield
    logfilter._secrets.clear()
    logfilter._secrets.update(saved)
    logfilter._pattern = None


def test_scrub_masks_remembered_values_longest_first() -> None:
    logfilter.remember({"oauth2": {"access_token": "abcdef123", "client_secret": "abcdef123456"}})
    assert logfilter.scrub("k=abcdef123456 and abcdef123.") == "k=******** and ********."
    # non-secret fields and short values are not remembered
    logfilter.remember(
        {
            "oauth2": {
                "token_type": "Bearer-long-value",
                "scope": "read write admin",
                "expires_at": "2030-01-01T00:00:00Z",
                "obtained_at": "2029-12-31T23:00:00Z",
                "refresh_token": "short",
            }
        }
    )
    text = "Bearer-long-value read write admin 2030-01-01T00:00:00Z 2029-12-31T23:00:00Z short"
    assert logfilter.scrub(text) == text


def test_every_secret_of_each_section_is_found() -> None:
    oauth2 = {
        "oauth2": {
            "access_token": "access-canary",
            "refresh_token": "refresh-canary",
            "id_token": "id-token-canary",
            "client_id": "client-id-canary",
            "client_secret": "client-secret-canary",
            "token_type": "Bearer",
            "scope": "read-canary-scope",
            "expires_at": "2030-01-01T00:00:00Z",
            "obtained_at": "2029-12-31T23:00:00Z",
        }
    }
    apikey = {"apikey": {"key": "key-canary", "secret": "secret-canary", "key_id": "kid-canary"}}
    custom = {"custom": {"password": "pw-canary", "nested": {"list": ["deep-canary"]}}}
    assert sorted(secret_strings(oauth2, min_length=4)) == sorted(
        [
            "access-canary",
            "refresh-canary",
            "id-token-canary",
            "client-id-canary",
            "client-secret-canary",
            "client-id-canary:client-secret-canary",  # the pair HTTP Basic encodes
        ]
    )
    assert sorted(secret_strings(apikey, min_length=4)) == [
        "key-canary",
        "key-canary:secret-canary",
        "kid-canary",
        "secret-canary",
    ]
    assert sorted(secret_strings(custom, min_length=4)) == ["deep-canary", "pw-canary"]


def test_oldest_values_are_forgotten_beyond_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logfilter, "MAX_REMEMBERED", 2)
    for n in range(3):
        logfilter.remember({"apikey": {"key": f"secret-{n}"}})
    assert logfilter.scrub("secret-0 secret-1 secret-2") == "secret-0 ******** ********"


def test_filter_rewrites_the_formatted_message(caplog: pytest.LogCaptureFixture) -> None:
    logfilter.install()
    logfilter.remember({"apikey": {"key": "key-canary-77"}})
    with caplog.at_level(logging.INFO, logger="httpx"):
        logging.getLogger("httpx").info("HTTP Request: GET %s", "https://x/?key=key-canary-77")
    assert caplog.messages == ["HTTP Request: GET https://x/?key=********"]


def test_child_loggers_and_percent_encoded_values_are_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logfilter.install()
    logfilter.remember({"apikey": {"key": "ab/cd+ef=="}})
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("prefect_integrations.oauth.lifecycle").warning("saw ab/cd+ef==")
        logging.getLogger("authlib.oauth2.rfc6749").debug("saw %s", "ab/cd+ef==")
        logging.getLogger("httpx").info("GET https://x/?key=ab%2Fcd%2Bef%3D%3D")
        logging.getLogger("elsewhere").info("ab/cd+ef==")  # not a filtered logger
    assert caplog.messages == [
        "saw ********",
        "saw ********",
        "GET https://x/?key=********",
        "ab/cd+ef==",
    ]


def _run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this one's environment); return its output."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_vault_leaves_logging_alone() -> None:
    """Importing the store installs nothing: the record factory and root filters stay."""
    out = _run_python(
        """
        import logging
        root = logging.getLogger()
        factory, filters = logging.getLogRecordFactory(), list(root.filters)
        import prefect_integrations.store.vault
        import prefect_integrations.runtime
        import prefect_integrations.cli
        assert logging.getLogRecordFactory() is factory
        assert root.filters == filters
        print("untouched")
        """
    )
    assert out == "untouched"


def test_the_runtime_installs_the_filter_once() -> None:
    """Building the runtime (CLI, blocks, tasks, flows) installs the filter, idempotently."""
    out = _run_python(
        """
        import logging
        from prefect_integrations import logfilter
        from prefect_integrations.runtime import Runtime
        factory = logging.getLogRecordFactory()
        Runtime()
        installed = logging.getLogRecordFactory()
        assert installed is not factory
        Runtime()
        logfilter.install()
        assert logging.getLogRecordFactory() is installed
        logfilter.remember({"apikey": {"key": "key-canary-91"}})
        record = logging.getLogger("httpx").makeRecord(
            "httpx", logging.INFO, "x.py", 1, "GET %s", ("https://x/?key=key-canary-91",), None
        )
        print(record.getMessage())
        """
    )
    assert out == "GET https://x/?key=********"


def test_the_cli_entry_installs_the_filter() -> None:
    """The console script installs the filter before any command runs."""
    out = _run_python(
        """
        import logging
        from prefect_integrations.cli import run
        factory = logging.getLogRecordFactory()
        assert run(["--help"]) == 0
        print("installed" if logging.getLogRecordFactory() is not factory else "missing")
        """
    )
    assert out.endswith("installed")
