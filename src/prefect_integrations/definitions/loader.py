"""From files to definitions: read, parse, validate and build, then fill a `Registry`.

    registry = load_registry()
    method = registry.get("xero").method("create_invoice")
    method.validate_input({"contact_id": ..., "line_items": [...]})

Problems are collected, never reported one at a time: `collect` returns every problem of
every file, `load_registry` raises one `DefinitionError` listing them all. Beyond
`~prefect_integrations.definitions.rules.validate_document`, a file's name must match its
id and an id may be defined only once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect_integrations._resources import bundled_path
from prefect_integrations.definitions.checked import checked_key, remember_checked, was_checked
from prefect_integrations.definitions.model import Definition, build_definition
from prefect_integrations.definitions.registry import Registry
from prefect_integrations.definitions.rules import (
    json_type,
    path_key,
    problem,
    validate_document,
)
from prefect_integrations.exceptions import DefinitionError, DefinitionProblem

__all__ = [
    "collect",
    "collect_layered",
    "load_document",
    "load_registry",
    "shipped_definitions_dir",
]

_IDENTIFIER_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def load_document(path: Path) -> tuple[dict[str, Any] | None, list[DefinitionProblem]]:
    """Read and parse one definition file (JSON only, no validation).

    Returns the document and no problems, or ``None`` and the problems (unreadable file,
    malformed JSON with line and column, top level not an object).
    """
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [problem(source, (), f"cannot read file: {exc.strerror or exc}")]
    return _parse(data, source)


def _parse(data: bytes, source: str) -> tuple[dict[str, Any] | None, list[DefinitionProblem]]:
    """Parse a definition file's bytes (`load_document` without the reading)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [problem(source, (), f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        message = f"malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        return None, [problem(source, (), message)]
    except ValueError as exc:
        return None, [problem(source, (), f"malformed JSON: {exc}")]
    except RecursionError:
        return None, [problem(source, (), "malformed JSON: nested too deeply")]
    if not isinstance(document, dict):
        message = f"top level must be a JSON object, not {json_type(document)}"
        return None, [problem(source, (), message)]
    return document, []


def _expand(paths: Iterable[Path]) -> Iterator[tuple[Path, list[DefinitionProblem]]]:
    """Yield each definition file to read, or a path with the problem that prevents it."""
    seen: set[Path] = set()
    for path in paths:
        try:
            if path.is_dir():
                files = sorted(p for p in path.glob("*.json") if p.is_file())
            elif path.exists():
                files = [path]
            else:
                yield path, [problem(str(path), (), "no such file or directory")]
                continue
        except OSError as exc:  # e.g. a name too long for the file system
            yield path, [problem(str(path), (), f"cannot read: {exc.strerror or exc}")]
            continue
        for file in files:
            resolved = file.resolve()
            if resolved in seen:
                continue  # the same file given twice (e.g. a folder and a file in it)
            seen.add(resolved)
            yield file, []


def collect(
    paths: Iterable[Path], *, checked_folder: Path | None = None
) -> tuple[list[Definition], list[DefinitionProblem]]:
    """Load every definition in ``paths`` (files, or folders of ``*.json``, non-recursive).

    Returns the valid definitions and every problem found in any file; never raises for bad
    content. Beyond `validate_document`, each file's name must match its id and an id may
    be defined only once (the later file gets the problem). A file whose exact content
    passed `validate_document` before, in this process or (``checked_folder``) in another,
    is not checked again (`prefect_integrations.definitions.checked`).
    """
    definitions: list[Definition] = []
    problems: list[DefinitionProblem] = []
    first_source: dict[str, str] = {}
    for path, path_problems in _expand(paths):
        if path_problems:
            problems.extend(path_problems)
            continue
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.append(problem(source, (), f"cannot read file: {exc.strerror or exc}"))
            continue
        document, file_problems = _parse(data, source)
        if document is None:
            problems.extend(file_problems)
            continue
        key = checked_key(data)
        passed = was_checked(key, checked_folder)
        file_problems = [] if passed else validate_document(document, source=source)
        if not passed and not file_problems:
            remember_checked(key, checked_folder)
        integration_id = document.get("integrationId")
        if isinstance(integration_id, str) and _IDENTIFIER_RE.fullmatch(integration_id):
            if path.stem != integration_id:
                file_problems.append(
                    problem(
                        source,
                        ("integrationId",),
                        f"file name '{path.name}' does not match id '{integration_id}' "
                        f"(expected '{integration_id}.json')",
                    )
                )
            if integration_id in first_source:
                file_problems.append(
                    problem(
                        source,
                        ("integrationId",),
                        f"duplicate integration id '{integration_id}', "
                        f"already defined in {first_source[integration_id]}",
                    )
                )
            else:
                first_source[integration_id] = source
        if file_problems:
            file_problems.sort(key=lambda p: (path_key(p.path), p.message))
            problems.extend(file_problems)
            continue
        try:
            definitions.append(build_definition(document, source=source, lazy=passed))
        except DefinitionError as exc:  # passed before; a handler since unregistered
            problems.extend(exc.problems)
    return definitions, problems


def shipped_definitions_dir() -> Path:
    """Return the folder of the definitions shipped with the package."""
    return bundled_path("definitions")


def load_registry(
    extra_paths: Sequence[Path] = (),
    *,
    include_shipped: bool = True,
    checked_folder: Path | None = None,
) -> Registry:
    """Load the shipped definitions plus ``extra_paths`` into a `Registry`.

    A definition in ``extra_paths`` replaces the shipped one with the same integration id
    (so a team can bring its own ``xero.json``); an id defined twice within
    ``extra_paths`` is a problem. Raises `DefinitionError` listing every problem of every
    file if any file is invalid. ``checked_folder`` remembers across processes which files
    passed (see `collect`).
    """
    definitions, problems = collect_layered(
        extra_paths, include_shipped=include_shipped, checked_folder=checked_folder
    )
    if problems:
        raise DefinitionError(problems)
    return Registry(definitions)


def collect_layered(
    extra_paths: Sequence[Path],
    *,
    include_shipped: bool = True,
    checked_folder: Path | None = None,
) -> tuple[list[Definition], list[DefinitionProblem]]:
    """`collect` the shipped definitions and ``extra_paths``, the latter replacing the former.

    What `load_registry` loads, without raising: the valid definitions (a configured one
    in place of the shipped one with its id) and every problem of every file.
    """
    definitions, problems = collect([Path(p) for p in extra_paths], checked_folder=checked_folder)
    if include_shipped:
        shipped, shipped_problems = collect(
            [shipped_definitions_dir()], checked_folder=checked_folder
        )
        problems = shipped_problems + problems
        replaced = {d.id for d in definitions}
        definitions = [d for d in shipped if d.id not in replaced] + definitions
    return definitions, problems
