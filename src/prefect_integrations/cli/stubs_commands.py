"""`prefect-integrations stubs`: type stubs of the generated tasks for this installation."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from prefect_integrations import stubs as stubs_module
from prefect_integrations.cli._common import echo, runtime
from prefect_integrations.exceptions import ConfigurationError, quote

__all__ = ["editable_install", "stubs"]


def editable_install() -> bool:
    """True when the package is installed in editable mode (a checkout, PEP 610)."""
    try:
        text = metadata.distribution("prefect-integrations").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return True  # run from a source tree that is not installed
    try:
        info = json.loads(text or "{}")
    except ValueError:
        return False
    return bool(isinstance(info, dict) and info.get("dir_info", {}).get("editable"))


def stubs(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write DIR/prefect_integrations/tasks.pyi (and __init__.pyi): a stub folder "
            "for mypy_path or a type checker's stub path. Default: beside the installed "
            "package's tasks.py",
        ),
    ] = None,
) -> None:
    """Write the type stubs of the generated tasks for the shipped and configured definitions.

    A wheel ships the stubs of the shipped definitions; run this after adding definitions
    (PREFECT_INTEGRATIONS_DEFINITIONS_PATH) so that editors and mypy know their tasks.
    """
    documents = [d.raw for d in runtime().registry]
    if out is None:
        if editable_install():
            raise ConfigurationError(
                "prefect-integrations is installed from a checkout (editable): a tasks.pyi "
                "beside tasks.py would hide it from its own type check; use --out DIR"
            )
        package = Path(stubs_module.__file__).parent
        target, marker = package.parent, False
    else:
        target, marker = out, True
    try:
        path = stubs_module.write_stubs(documents, target, package_marker=marker)
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot write the stubs in {quote(str(target), limit=1000)}: {exc.strerror or exc}"
        ) from None
    ids = ", ".join(sorted(str(d.get("integrationId")) for d in documents))
    echo(f"wrote {path} ({len(documents)} integration(s): {ids})")
    if out is not None:
        echo(f'for mypy: mypy_path = "{out}" (pyright: stubPath)')
