"""Runs the ``prefect-integrations`` command line in-process like a user would, for tests."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa

from prefect_integrations.cli import run
from prefect_integrations.db import Database


class Result(NamedTuple):
    """What one command returned and printed."""

    code: int
    out: str
    err: str


class Cli:
    """Runs commands like a user would; remembers every output for the secret checks."""

    def __init__(
        self,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        secrets: Iterable[str] = (),
    ) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.transcript: list[tuple[tuple[str, ...], Result]] = []
        self.secrets: list[str] = list(secrets)

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        self.capsys.readouterr()  # drop anything printed before
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = run(list(args))
        out, err = self.capsys.readouterr()
        result = Result(code, out, err)
        self.transcript.append((args, result))
        return result

    def ok(self, *args: str, stdin: str | None = None) -> Result:
        """Run a command that must succeed."""
        result = self(*args, stdin=stdin)
        assert result.code == 0, f"{' '.join(args)} failed: {result}"
        assert "Traceback" not in result.out + result.err
        return result

    def json(self, *args: str) -> Any:
        """Run a successful ``--json`` command and parse its output."""
        return json.loads(self.ok(*args, "--json").out)

    def assert_no_secrets(self) -> None:
        for args, result in self.transcript:
            for secret in self.secrets:
                assert secret not in result.out, f"secret printed on stdout by {args}"
                assert secret not in result.err, f"secret printed on stderr by {args}"


def assert_one_error(result: Result, code: str, *fragments: str) -> str:
    """The command failed with exactly one line ``error[code]: ...`` naming ``fragments``."""
    assert result.code == 1, result
    assert "Traceback" not in result.out + result.err, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    line = lines[0]
    assert line.startswith(f"error[{code}]: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def write(folder: Path, name: str, content: object) -> str:
    """Write ``content`` (JSON-encoded unless it is a string) to a file; return the path."""
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def counts(db: Database) -> tuple[int, int]:
    """(instances, audit rows), read directly from the database."""
    with db.transaction() as session:
        found = session.execute(sa.text("SELECT count(*) FROM integration_instances")).scalar()
        rows = session.execute(sa.text("SELECT count(*) FROM integration_audit_log")).scalar()
    return int(found or 0), int(rows or 0)


def use_definitions(monkeypatch: pytest.MonkeyPatch, folder: Path, files: dict[str, str]) -> Path:
    """Write definition ``files`` (name -> JSON text) into ``folder`` and configure it.

    The folder becomes ``PREFECT_INTEGRATIONS_DEFINITIONS_PATH`` and the CLI's runtime is
    rebuilt, so the next command sees the shipped definitions plus these.
    """
    from prefect_integrations.cli._common import reset_runtime

    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", str(folder))
    reset_runtime()
    return folder
