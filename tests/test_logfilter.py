"""The log filter that masks decrypted credential values in log records."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from prefect_integrations import logfilter


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
    logfilter.remember({"api_key": "abcdef123", "oauth2": {"client_secret": "abcdef123456"}})
    assert logfilter.scrub("k=abcdef123456 and abcdef123.") == "k=******** and ********."
    # non-secret fields and short values are not remembered
    logfilter.remember({"token_type": "Bearer-long-value", "api_key": "short"})
    assert logfilter.scrub("Bearer-long-value short") == "Bearer-long-value short"


def test_oldest_values_are_forgotten_beyond_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logfilter, "MAX_REMEMBERED", 2)
    for n in range(3):
        logfilter.remember({"api_key": f"secret-{n}"})
    assert logfilter.scrub("secret-0 secret-1 secret-2") == "secret-0 ******** ********"


def test_filter_rewrites_the_formatted_message(caplog: pytest.LogCaptureFixture) -> None:
    logfilter.install()
    logfilter.remember({"api_key": "key-canary-77"})
    with caplog.at_level(logging.INFO, logger="httpx"):
        logging.getLogger("httpx").info("HTTP Request: GET %s", "https://x/?key=key-canary-77")
    assert caplog.messages == ["HTTP Request: GET https://x/?key=********"]


def test_child_loggers_and_percent_encoded_values_are_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logfilter.install()
    logfilter.remember({"api_key": "ab/cd+ef=="})
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
