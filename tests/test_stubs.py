"""Type stubs of the generated tasks: mypy on a flow, agreement with the tasks, the wheel.

The mypy test runs the real mypy on flow files written to a temporary folder, with the
stubs `prefect-integrations stubs --out` wrote for the shipped and the echo definitions:
correct calls pass, each kind of mistake fails with mypy's own message.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

import prefect_integrations
from prefect_integrations import tasks
from prefect_integrations.cli import run
from prefect_integrations.cli._common import reset_runtime
from prefect_integrations.definitions import Registry, load_registry, shipped_definitions_dir
from prefect_integrations.stubs import STUB_RELATIVE_PATH, render_stubs

SOURCE = Path(prefect_integrations.__file__).resolve().parent.parent
ROOT = SOURCE.parent

GOOD = """\
from typing import TYPE_CHECKING

from prefect import flow
from prefect_integrations.context import integration_context
from prefect_integrations.tasks import echo, slack, tasks_for, xero

if TYPE_CHECKING:
    from prefect_integrations.tasks import XeroCreateInvoiceOutput


@flow
def bill(contact_id: str) -> str:
    with integration_context(client_id="acme"):
        invoice: XeroCreateInvoiceOutput = xero.create_invoice(
            contact_id=contact_id,
            line_items=[{"description": "Consulting", "quantity": 2, "unit_amount": 150}],
            status="AUTHORISED",
        )
    total: float = invoice["total"]
    number: str | None = invoice.get("invoice_number")
    slack.post_message(
        channel="C0123456789",
        text=f"Invoice {number} for {total}",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*paid*"}}],
        instance="slack_ops",
    )
    future = xero.get_invoice.submit(invoice_id=invoice["invoice_id"])
    status: str = future.result()["status"]
    futures = echo.get_item.map(item_id=[1, 2])
    names: list[str] = [f.result()["name"] for f in futures]
    retried = tasks_for("xero", retries=2).list_contacts(page=1)
    first: str = retried["contacts"][0]["contact_id"]
    return status + "".join(names) + first
"""

#: (source line, a text the mypy error on that line contains)
MISTAKES = [
    ('xero.create_invoce(contact_id="c", line_items=[])', '"XeroTasks" has no attribute'),
    ('slack.post_message(chanel="C1", text="hi")', 'No overload variant of "__call__"'),
    ("xero.get_invoice(invoice_id=42)", 'matches argument type "int"'),
    ('xero.create_invoice(contact_id="c")', 'No overload variant of "__call__"'),
    (
        'xero.create_invoice(contact_id="c", line_items=[{"description": "a", '
        '"quantity": "two", "unit_amount": 1}])',
        'TypedDict item "quantity" has type "float"',
    ),
    ('xero.create_invoice(contact_id="c", line_items=[], status="SENT")', "call-overload"),
    ('xero.get_invoice.submit(invoice_idd="i")', 'No overload variant of "submit"'),
    ('echo.get_item(item_id="1")', 'matches argument type "str"'),
    ('xero.get_invoice(invoice_id="i")["totl"]', '"totl" is not a valid TypedDict key'),
]


def _bad_flow() -> str:
    lines = [
        "from prefect_integrations.tasks import echo, slack, xero",
        "",
        "",
        "def mistakes() -> None:",
    ]
    lines += [f"    {source}" for source, _ in MISTAKES]
    return "\n".join(lines) + "\n"


@pytest.fixture
def stub_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    echo_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> Path:
    """``stubs --out`` for the shipped definitions plus the echo ones (the settings')."""
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", str(echo_dir))
    reset_runtime()
    try:
        out = tmp_path / "typings"
        assert run(["stubs", "--out", str(out)]) == 0
    finally:
        reset_runtime()
    printed = capsys.readouterr().out
    assert f"wrote {out / STUB_RELATIVE_PATH}" in printed
    assert "echo, echo_basic" in printed
    return out


def test_mypy_accepts_correct_calls_and_refuses_each_mistake(
    tmp_path: Path, stub_folder: Path
) -> None:
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(_bad_flow())
    (tmp_path / "mypy.ini").write_text(
        textwrap.dedent(
            f"""\
            [mypy]
            strict = True
            mypy_path = {stub_folder}:{SOURCE}
            cache_dir = {tmp_path / ".mypy_cache"}
            [mypy-authlib.*]
            ignore_missing_imports = True
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "good.py", "bad.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert done.returncode == 1, output
    assert not [e for e in errors if not e.startswith("bad.py:")], output
    first_line = 5  # the first mistake's line in bad.py
    for offset, (source, expected) in enumerate(MISTAKES):
        on_line = [e for e in errors if e.startswith(f"bad.py:{first_line + offset}: ")]
        assert on_line, f"mypy accepted {source!r}:\n{output}"
        assert any(expected in e for e in on_line), (source, on_line)
    assert len({e.split(":")[1] for e in errors}) == len(MISTAKES), output
    # the misspelt keyword's note shows the real signature, the one spelt 'channel'
    assert "def __call__(*, channel: str," in output
    assert 'maybe "create_invoice"?' in output


def _stub_functions(text: str) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("with_echo", [False, True])
def test_stub_signatures_are_those_of_the_generated_tasks(with_echo: bool, echo_dir: Path) -> None:
    registry: Registry = load_registry([echo_dir] if with_echo else [])
    text = render_stubs(d.raw for d in registry)
    functions = _stub_functions(text)
    checked = 0
    for definition in registry:
        for method in definition.methods.values():
            stub = functions[f"_{definition.id}__{method.id}"]
            signature, _ = tasks.method_signature(method)
            expected = [
                (p.name, p.default is inspect.Parameter.empty)
                for p in signature.parameters.values()
            ]
            found = [
                (arg.arg, default is None)
                for arg, default in zip(stub.args.kwonlyargs, stub.args.kw_defaults, strict=True)
            ]
            assert found == expected, method.qualified_name
            checked += 1
    assert checked == sum(len(d.methods) for d in registry)
    exported = [
        node.value
        for node in ast.parse(text).body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__"
    ]
    names = set(ast.literal_eval(exported[0]))
    assert set(tasks.__all__) <= names
    assert {d.id for d in registry} <= names


def test_stub_handles_keys_that_are_not_identifiers_and_open_objects() -> None:
    document: dict[str, Any] = {
        "integrationId": "odd",
        "name": "Odd",
        "methods": [
            {
                "id": "send",
                "inputSchema": {
                    "type": "object",
                    "required": ["class", "payload"],
                    "properties": {
                        "class": {"type": "string"},
                        "instance": {"type": ["integer", "null"]},
                        "payload": {
                            "type": "object",
                            "properties": {
                                "content-type": {"const": "json"},
                                "n": {"type": "number"},
                            },
                        },
                    },
                },
                "outputSchema": {"type": "array", "items": {"type": "string"}},
            }
        ],
    }
    text = render_stubs([document])
    compile(text, "tasks.pyi", "exec")
    assert "    class_: str," in text
    assert "    instance_: int | None | None = None," in text
    assert "payload: OddSendPayload | dict[str, Any]," in text  # other keys allowed
    assert (
        "OddSendPayload = TypedDict('OddSendPayload', "
        "{'content-type': NotRequired[Literal['json']], 'n': NotRequired[float]})"
    ) in text
    assert ") -> list[str]:" in text


def test_stubs_refuses_to_write_into_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    # these tests run from a checkout (an editable install): tasks.pyi beside tasks.py
    # would replace tasks.py in the project's own type check
    assert run(["stubs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error[configuration_error]: ")
    assert "use --out DIR" in err
    assert not (SOURCE / "prefect_integrations" / "tasks.pyi").exists()


def test_stubs_names_a_folder_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run(["stubs", "--out", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error[configuration_error]: Cannot write the stubs in '{blocker}'")


def test_wheel_carries_the_stubs_of_the_shipped_definitions(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    documents = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(shipped_definitions_dir().glob("*.json"))
    ]
    assert {d["integrationId"] for d in documents} == {"gmail", "slack", "xero"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "prefect_integrations/py.typed" in names
        shipped = archive.read("prefect_integrations/tasks.pyi").decode("utf-8")
    assert shipped == render_stubs(documents)
    assert "xero: XeroTasks" in shipped


def _parameters(function: ast.FunctionDef) -> list[tuple[str, str]]:
    arguments = function.args
    return [
        *((a.arg, "POSITIONAL_OR_KEYWORD") for a in arguments.args),
        *((a.arg, "KEYWORD_ONLY") for a in arguments.kwonlyargs),
    ]


def test_stub_declares_the_module_functions_as_they_are() -> None:
    # the stub replaces tasks.py for type checkers: its own functions must match
    functions: dict[str, list[ast.FunctionDef]] = {}
    for node in ast.parse(render_stubs(d.raw for d in load_registry())).body:
        if isinstance(node, ast.FunctionDef):
            functions.setdefault(node.name, []).append(node)
    checked = []
    for name in [*tasks.__all__, "method_signature"]:
        runtime_object = getattr(tasks, name)
        if not inspect.isfunction(runtime_object):
            continue
        checked.append(name)
        expected = [
            (p.name, p.kind.name) for p in inspect.signature(runtime_object).parameters.values()
        ]
        for stub in functions[name]:  # each overload of tasks_for
            assert _parameters(stub) == expected, name
    assert {"build_task", "call_method", "method_signature", "tasks_for"} <= set(checked)


def test_stubs_without_out_write_beside_an_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect_integrations import stubs as stubs_module
    from prefect_integrations.cli import stubs_commands

    installed = tmp_path / "site-packages" / "prefect_integrations"
    installed.mkdir(parents=True)
    monkeypatch.setattr(stubs_commands, "editable_install", lambda: False)
    monkeypatch.setattr(stubs_module, "__file__", str(installed / "stubs.py"))
    monkeypatch.setenv("PREFECT_INTEGRATIONS_DEFINITIONS_PATH", "")
    reset_runtime()
    try:
        assert run(["stubs"]) == 0
    finally:
        reset_runtime()
    assert f"wrote {installed / 'tasks.pyi'}" in capsys.readouterr().out
    assert (installed / "tasks.pyi").read_text() == render_stubs(d.raw for d in load_registry())
    assert not (installed / "__init__.pyi").exists()  # the package's own __init__.py stays


def test_the_build_hook_needs_no_dependency_of_the_package() -> None:
    # hatch_build.py imports prefect_integrations.stubs in the build environment, which
    # holds hatchling only: the stub renderer must import nothing but the standard library
    allowed = {"prefect_integrations", "prefect_integrations.method_docs"}
    for module in ("__init__", "stubs", "method_docs"):
        tree = ast.parse((SOURCE / "prefect_integrations" / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert name in allowed or top in sys.stdlib_module_names, (module, name)
