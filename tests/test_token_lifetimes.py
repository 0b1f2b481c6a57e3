"""Short-lived tokens: one token request per expiry, however many calls wait for it.

The lead time before expiry is capped at half the token's lifetime, so a token a few
seconds long is not due the moment it arrives; callers that find a refresh in flight use
the winner's token. Checked against a real OAuth server issuing client-credentials tokens
of 2 s, 30 s and 1 h.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from prefect_integrations.client import IntegrationClient
from prefect_integrations.credentials import to_epoch
from prefect_integrations.db import Database
from prefect_integrations.definitions import Registry
from prefect_integrations.keyring import Keyring
from prefect_integrations.oauth.endpoint import merge_token
from prefect_integrations.oauth.refresh_policy import refresh_due, should_refresh
from prefect_integrations.store import instances

from .factories import make_instance
from .oauth import OAuthServer, start_oauth_server

REDIRECT_URI = "http://127.0.0.1:8765/callback"
CALLS = 8


@pytest.fixture(scope="module", params=[2, 30, 3600], ids=["2s", "30s", "1h"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, OAuthServer]]:
    """A server issuing client-credentials tokens of the given lifetime (seconds)."""
    ttl: int = request.param
    with start_oauth_server(
        redirect_uris=[REDIRECT_URI],
        tmp_path=tmp_path_factory.mktemp(f"oauth-{ttl}"),
        config={"client_credentials_ttl": ttl},
    ) as running:
        yield ttl, running


@pytest.fixture
def server(served: tuple[int, OAuthServer]) -> OAuthServer:
    running = served[1]
    running.clear_faults()
    running.reset_stats()
    return running


def _instance(db: Database, registry: Registry, keyring: Keyring, server: OAuthServer) -> str:
    with db.transaction() as s:
        make_instance(
            s,
            registry,
            keyring,
            "m2m_short",
            "authsrv_m2m",
            config={
                "base_url": server.issuer,
                "authorization_url": server.authorization_url,
                "token_url": server.token_url,
            },
            credentials={
                "oauth2": {
                    "client_id": server.m2m_client_id,
                    "client_secret": server.m2m_client_secret,
                }
            },
            actor="admin",
        )
    return "m2m_short"


def _client(db: Database, registry: Registry, keyring: Keyring) -> IntegrationClient:
    return IntegrationClient("m2m_short", db=db, registry=registry, keyring=keyring, actor="t")


def _token_requests(server: OAuthServer) -> int:
    grants: dict[str, int] = server.stats()["by_grant"]
    return sum(grants.values())


@pytest.mark.parametrize(
    ("lifetime", "lead"),
    [(2, 1.0), (4, 2.0), (30, 15.0), (300, 60.0), (3600, 360.0)],
)
def test_the_lead_time_is_at_most_half_the_lifetime(lifetime: int, lead: float) -> None:
    values: dict[str, Any] = {
        "oauth2": {"access_token": "a", "obtained_at": 1000, "expires_at": 1000 + lifetime}
    }
    assert refresh_due(values) == 1000 + lifetime - lead
    fresh = should_refresh(
        values, now=1000 + lifetime - lead - 0.01, grant_type="client_credentials"
    )
    due = should_refresh(values, now=1000 + lifetime - lead, grant_type="client_credentials")
    assert (fresh.refresh, due.refresh) == (False, True)


def test_a_new_token_is_used_for_calls_right_after_it_arrives(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    served: tuple[int, OAuthServer],
    server: OAuthServer,
) -> None:
    lifetime = served[0]
    _instance(echo_db, echo_registry, keyring, server)
    server.reset_stats()
    started = time.monotonic()
    for _ in range(CALLS):  # each a new client: nothing remembered between calls
        with _client(echo_db, echo_registry, keyring) as client:
            assert client.call("list_items")["client_id"] == server.m2m_client_id
    elapsed = time.monotonic() - started
    # The first call's request, and none after while each token is fresh: a token is due
    # half its lifetime after it arrived, so a slow (shared, busy) machine may see one
    # more per half lifetime elapsed, never one per call.
    assert 1 <= _token_requests(server) <= 1 + int(elapsed // (lifetime / 2))


def _expire(
    db: Database, registry: Registry, keyring: Keyring, server: OAuthServer, ttl: int
) -> None:
    """Store a token of ``ttl`` seconds that expired a second ago."""
    now = time.time()
    with db.transaction() as s:
        instances.set_credentials(
            s,
            registry,
            keyring,
            "m2m_short",
            {
                "oauth2": {
                    "client_id": server.m2m_client_id,
                    "client_secret": server.m2m_client_secret,
                    "access_token": "expired-token",
                    "obtained_at": now - ttl - 1,
                    "expires_at": now - 1,
                }
            },
            actor="admin",
        )


def test_concurrent_calls_after_expiry_make_one_token_request(
    echo_db: Database,
    echo_registry: Registry,
    keyring: Keyring,
    server: OAuthServer,
    served: tuple[int, OAuthServer],
) -> None:
    _instance(echo_db, echo_registry, keyring, server)
    _expire(echo_db, echo_registry, keyring, server, served[0])
    server.reset_stats()
    server.inject_token_fault(delay_ms=300)  # the winner is still busy as the others arrive
    start = threading.Barrier(CALLS)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with _client(echo_db, echo_registry, keyring) as client:
                start.wait(timeout=60)
                client.call("list_items")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(CALLS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert _token_requests(server) == 1
    server.clear_faults()
    if served[0] < 30:
        return  # a 1-second half-life is shorter than 8 calls on a busy machine
    for _ in range(CALLS):  # then calls in a row, within the new token's first half-life
        with _client(echo_db, echo_registry, keyring) as client:
            client.call("list_items")
    assert _token_requests(server) == 1


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        (3600, 3600.0),
        (3600.0, 3600.0),
        ("3600", 3600.0),
        ("3600.0", 3600.0),
        (" 90 ", 90.0),
        (True, None),
        (-5, None),
        ("nan", None),
        ("\u00b2", None),
        ("1e30", None),
        ([3600], None),
    ],
)
def test_expires_in_is_read_as_seconds_in_every_common_form(
    expires_in: object, lifetime: float | None
) -> None:
    merged = merge_token(
        {"oauth2": {"client_id": "c"}},
        {"access_token": "a", "expires_in": expires_in},
        now=1000.0,
    )
    expires_at = merged["oauth2"].get("expires_at")
    assert (to_epoch(expires_at) - 1000.0 if expires_at else None) == lifetime
