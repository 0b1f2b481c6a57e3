from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from prefect_integrations import keyring as keyring_mod
from prefect_integrations.exceptions import KeyringError
from prefect_integrations.keyring import generate_key, load_keyring, parse_keyring
from prefect_integrations.settings import Settings

KEY = generate_key()


def test_generate_key_is_32_random_bytes() -> None:
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(base64.b64decode(k)) == 32 for k in keys)


def test_parse_keyring_primary_first() -> None:
    other = generate_key()
    ring = parse_keyring(f"k2:{KEY}, k1:{other}")
    assert ring.primary_id == "k2" and ring.ids == ["k2", "k1"]
    assert ring.get("k1") == SecretStr(other) and ring.get("zz") is None
    assert KEY not in repr(ring)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no keys"),
        ("k1", "entry 1 has no ':'"),
        (f"k 1:{KEY}", "entry 1: key id must be"),
        (f"k1:{KEY},k1:{KEY}", "entry 2: key id 'k1' appears twice"),
        ("k1:not base64!!", "entry 1 (key 'k1') is not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
    ],
)
def test_bad_keyrings_never_echo_key_material(text: str, message: str) -> None:
    with pytest.raises(KeyringError) as info:
        parse_keyring(text)
    assert message in str(info.value)
    material = text.partition(":")[2]
    if len(material) > 4:
        assert material.split(",")[0] not in str(info.value)


def test_external_database_without_keyring_is_an_error(tmp_path: Path) -> None:
    settings = Settings(database_url=SecretStr("postgresql://x@/y"), home=tmp_path)
    with pytest.raises(KeyringError, match="PREFECT_INTEGRATIONS_KEYS"):
        load_keyring(settings)


def test_embedded_dev_keyring_is_private_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(keyring_mod.DEV_KEYRING_WARNED_ENV, raising=False)
    settings = Settings(home=tmp_path / "home")
    with caplog.at_level(logging.WARNING):
        first = load_keyring(settings)
        second = load_keyring(settings)
    assert first.primary == second.primary
    path = tmp_path / "home" / "keyring"
    assert (path.stat().st_mode & 0o777) == 0o600
    warnings = [r for r in caplog.records if "development keyring" in r.getMessage()]
    assert len(warnings) == 1


_CHILD = """
import logging, sys
logging.basicConfig(stream=sys.stderr, format="%(message)s")
from prefect_integrations.keyring import load_keyring
from prefect_integrations.settings import Settings
load_keyring(Settings())
"""


def test_dev_keyring_warning_is_given_once_per_command_not_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A command's processes (flow runs it starts) inherit that the warning was given."""
    home = tmp_path / "home"
    monkeypatch.delenv(keyring_mod.DEV_KEYRING_WARNED_ENV, raising=False)
    monkeypatch.delenv("PREFECT_INTEGRATIONS_DATABASE_URL", raising=False)
    monkeypatch.delenv("PREFECT_INTEGRATIONS_KEYS", raising=False)
    monkeypatch.setenv("PREFECT_INTEGRATIONS_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))

    def child() -> str:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True
        )
        return done.stderr

    assert "development keyring" in child()  # a command of its own warns
    with caplog.at_level(logging.WARNING):
        load_keyring(Settings(home=home))  # the command
    assert [r for r in caplog.records if "development keyring" in r.getMessage()]
    assert os.environ[keyring_mod.DEV_KEYRING_WARNED_ENV] == str(home / "keyring")
    assert "development keyring" not in child()  # a process it starts stays quiet
    monkeypatch.setenv("PREFECT_INTEGRATIONS_HOME", str(tmp_path / "other"))
    assert "development keyring" in child()  # another keyring is warned about


def test_dev_keyring_created_is_warned_even_when_marked_as_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker quiets an existing keyring only: new keys (file deleted) are announced."""
    home = tmp_path / "home"
    path = home / "keyring"
    monkeypatch.setenv(keyring_mod.DEV_KEYRING_WARNED_ENV, str(path))
    with caplog.at_level(logging.WARNING):
        load_keyring(Settings(home=home))
    warnings = [r.getMessage() for r in caplog.records if "development keyring" in r.getMessage()]
    assert len(warnings) == 1 and "new keys" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_keyring(Settings(home=home))  # the same file again: quiet
    assert not [r for r in caplog.records if "development keyring" in r.getMessage()]


def test_configured_keyring_wins(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, keys=SecretStr(f"prod:{KEY}"))
    assert load_keyring(settings).primary_id == "prod"
    assert not (tmp_path / "keyring").exists()
