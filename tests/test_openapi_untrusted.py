"""An OpenAPI description is untrusted input: what it may make the importer read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_integrations.exceptions import ValidationError
from prefect_integrations.openapi import import_openapi

_SPEC = (
    "openapi: 3.0.0\ninfo: {{title: t, version: '1'}}\nservers: [{{url: 'https://a.example'}}]\n"
    "paths:\n  /a:\n    get:\n      operationId: getA\n      responses:\n"
    "        '200':\n          description: ok\n          content:\n"
    "            application/json:\n              schema: {{$ref: '{ref}'}}\n"
)


def test_a_reference_outside_the_descriptions_folder_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "secret.json").write_text(json.dumps({"type": "string", "default": "AKIA-X"}))
    folder = tmp_path / "specs" / "sub"
    folder.mkdir(parents=True)
    spec = folder / "api.yaml"
    for ref in ("../../secret.json", str(tmp_path / "secret.json"), "/dev/zero"):
        spec.write_text(_SPEC.format(ref=ref), encoding="utf-8")
        with pytest.raises(ValidationError, match="points outside the description's folder"):
            import_openapi(spec, integration_id="x")


def test_a_reference_to_a_file_beside_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "item.json").write_text(
        json.dumps({"type": "object", "properties": {"name": {"type": "string"}}})
    )
    spec = tmp_path / "api.yaml"
    spec.write_text(_SPEC.format(ref="item.json"), encoding="utf-8")
    definition = import_openapi(spec, integration_id="x").document
    [method] = definition["methods"]
    assert "name" in json.dumps(method["outputSchema"])


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 9)
    )
    spec = tmp_path / "bomb.yaml"
    spec.write_text("openapi: 3.0.0\n" + bomb, encoding="utf-8")
    with pytest.raises(
        ValidationError, match=r"aliases \(\*name\) are not accepted.* at line 3, column 10"
    ):
        import_openapi(spec, integration_id="x")


def test_a_description_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a regular file"):
        import_openapi(Path("/dev/zero"), integration_id="x")
    with pytest.raises(ValidationError, match="not a regular file"):
        import_openapi(tmp_path, integration_id="x")


def test_out_replaces_a_file_only_with_force_and_never_the_description(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect_integrations.cli import run

    (tmp_path / "item.json").write_text(json.dumps({"type": "string"}))
    spec = tmp_path / "api.yaml"
    spec.write_text(_SPEC.format(ref="item.json"), encoding="utf-8")
    out = tmp_path / "x.json"
    out.write_text("keep")
    args = ["definitions", "import-openapi", str(spec), "--integration-id", "x", "--out"]
    assert run([*args, str(out)]) == 1
    assert "already exists (use --force to replace it)" in capsys.readouterr().err
    assert out.read_text() == "keep"
    assert run([*args, str(out), "--force"]) == 0
    assert json.loads(out.read_text())["integrationId"] == "x"
    assert run([*args, str(spec), "--force"]) == 1
    assert "is the description being imported" in capsys.readouterr().err
    assert run([*args, "", "--force"]) == 1
    assert "is a folder, not a file" in capsys.readouterr().err
    assert spec.read_text(encoding="utf-8").startswith("openapi: 3.0.0")


def test_names_the_system_refuses_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect_integrations.cli import run

    (tmp_path / "item.json").write_text(json.dumps({"type": "string"}))
    spec = tmp_path / "api.yaml"
    spec.write_text(_SPEC.format(ref="item.json"), encoding="utf-8")
    long = str(tmp_path / ("u" * 300))
    args = ["definitions", "import-openapi", str(spec), "--integration-id", "x", "--out", long]
    assert run(args) == 1
    assert "File name too long" in capsys.readouterr().err
    assert run([*args[:-1], str(tmp_path / "missing" / "x.json")]) == 1
    assert "no such folder" in capsys.readouterr().err
