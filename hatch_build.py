"""Wheel build hook: the type stubs of the shipped definitions' generated tasks.

`prefect_integrations.tasks` builds its tasks at run time; the wheel carries
``prefect_integrations/tasks.pyi``, rendered here from ``definitions/*.json`` by
`prefect_integrations.stubs`, so that type checkers know them. That module and the one it
uses import only the standard library: the build needs none of the package's dependencies.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class StubsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Render ``prefect_integrations/tasks.pyi`` into the wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Render the stub into a temporary file and include it in the wheel.

        Not in an editable wheel: there a tasks.pyi in site-packages would stand beside the
        checkout's tasks.py (`prefect-integrations stubs --out DIR` serves a checkout).
        """
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        documents = [
            json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((root / "definitions").glob("*.json"))
        ]
        source = str(root / "src")
        sys.path.insert(0, source)
        try:
            stubs = importlib.import_module("prefect_integrations.stubs")
        finally:
            sys.path.remove(source)
        if not Path(str(stubs.__file__)).resolve().is_relative_to(Path(source).resolve()):
            raise RuntimeError(f"prefect_integrations.stubs was imported from {stubs.__file__}")
        self._folder = tempfile.TemporaryDirectory()
        stub = Path(self._folder.name) / "tasks.pyi"
        stub.write_text(stubs.render_stubs(documents), encoding="utf-8")
        build_data["force_include"][str(stub)] = "prefect_integrations/tasks.pyi"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the temporary stub."""
        folder = getattr(self, "_folder", None)
        if folder is not None:
            folder.cleanup()
