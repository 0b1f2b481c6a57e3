"""Definition files that passed `validate_document`, remembered by a hash of their content.

Checking a definition file is mostly checking its embedded JSON Schemas against the draft
2020-12 meta-schema (jsonschema's ``check_schema``): about 3.5 s for the 100 methods of the
shipped Xero and Slack, against 0.2 s for the rest of a load. Compiling the validators is
not the cost (jsonschema builds them lazily: 5 ms for all of them). So a file whose exact
bytes passed before, checked by the same code, is not checked again: within the process
(in memory), and across processes when `collect` is given a folder (the runtime gives
``<home>/cache/checked-definitions``: one empty file per pass, named by its key). Only
passes are remembered: a bad file is checked, and its problems reported in full, at every
load. A file that passed still has its handlers resolved and its definition-level
templates compiled at load; its methods' ``http`` templates compile at their first call.

The key is the SHA-256 of the checker and of the file's bytes; the checker is the source
of `prefect_integrations.definitions`, of `prefect_integrations.validation` and of the
templates (whose methods' ``http`` bindings are then compiled at their first use), the
definition meta-schema, and the versions of jsonschema and referencing, so a change to any
of them checks every file again. Whoever can write to the folder can mark a file as
checked; the folder lives in the home, beside the keyring and the cluster it protects.
"""

from __future__ import annotations

import hashlib
import threading
from functools import cache
from importlib import metadata, resources
from pathlib import Path

__all__ = ["CHECKED_FOLDER", "checked_key", "forget_checked", "remember_checked", "was_checked"]

#: The folder of pass markers under the home (`prefect_integrations.runtime`).
CHECKED_FOLDER = Path("cache") / "checked-definitions"

_PASSED: set[str] = set()
_LOCK = threading.Lock()


@cache
def _checker_fingerprint() -> bytes:
    """A hash of everything that decides whether a definition file passes."""
    digest = hashlib.sha256()
    package = resources.files("prefect_integrations")
    here = Path(__file__).parent
    package_dir = here.parent
    sources = [
        *sorted(here.glob("*.py")),
        *(package_dir / n for n in ("validation.py", "_templates.py", "_template_filters.py")),
    ]
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    meta_schema = package.joinpath("schemas", "definition.schema.json").read_bytes()
    digest.update(meta_schema + b"\0")
    for distribution in ("jsonschema", "referencing"):
        digest.update(f"{distribution}=={metadata.version(distribution)}\0".encode())
    return digest.digest()


def checked_key(data: bytes) -> str:
    """The key of a definition file's bytes under the current checker (hex SHA-256)."""
    return hashlib.sha256(_checker_fingerprint() + data).hexdigest()


def was_checked(key: str, folder: Path | None = None) -> bool:
    """True when the file of ``key`` passed before, in this process or (``folder``) another."""
    with _LOCK:
        if key in _PASSED:
            return True
    if folder is None:
        return False
    try:
        found = (folder / key).is_file()
    except OSError:
        return False
    if found:
        with _LOCK:
            _PASSED.add(key)
    return found


def remember_checked(key: str, folder: Path | None = None) -> None:
    """Record that the file of ``key`` passed, in memory and (``folder``) as a marker file.

    A folder that cannot be written (a read-only home) only means later processes check the
    file again.
    """
    with _LOCK:
        _PASSED.add(key)
    if folder is None:
        return
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / key).touch()
    except OSError:
        pass


def forget_checked() -> None:
    """Forget the passes remembered in this process (tests; marker files stay)."""
    with _LOCK:
        _PASSED.clear()
