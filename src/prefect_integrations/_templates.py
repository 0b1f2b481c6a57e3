"""Jinja2 templates of the HTTP bindings: sandboxed, native-typed, compiled once.

A *template* is a string containing ``{{``, ``{%`` or ``{#``. A *template tree* is any JSON
value whose strings may be templates: objects and arrays are walked, templates rendered,
other values kept. Rendering follows three rules:

- a template that is exactly one ``{{ expression }}`` yields the expression's native value
  (list, dict, number, bool, None); a template mixing text and expressions yields a string
  (None and undefined values print as nothing, booleans as ``true``/``false``);
- an object entry whose value renders to None or to an undefined value is omitted, and so is
  an array item: that is how absent optional inputs disappear from bodies and queries;
- undefined values chain (``response.a.b[0].c`` is undefined when ``a`` is missing, never an
  error), so optional data never breaks a render.

The environment is Jinja's `ImmutableSandboxedEnvironment` (templates cannot reach Python
internals nor mutate the values they are given) with the native code generator, and never
literal-evaluates strings (Jinja's `NativeEnvironment` would turn the text ``"200"`` into
the number 200). Templates are compiled once per distinct source and kept, so a definition
loaded again reuses them; nothing is compiled per call.

Filters (beyond Jinja's built-ins) and how values read as text are in
`prefect_integrations._template_filters`. The module is over 450 lines because the sandbox,
its code generator, the path segment finalizer and the compiled template share the rules
above and are read together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, unquote

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, Undefined, nodes
from jinja2.compiler import Frame
from jinja2.meta import find_undeclared_variables
from jinja2.nativetypes import NativeCodeGenerator
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from prefect_integrations._template_filters import FILTERS, OMIT, dumps, is_omitted, to_text
from prefect_integrations.exceptions import ValidationError

__all__ = [
    "FILTERS",
    "OMIT",
    "CompiledTemplate",
    "Node",
    "RenderError",
    "Scope",
    "Sink",
    "TemplateProblem",
    "compile_one",
    "compile_template",
    "compile_tree",
    "dumps",
    "is_omitted",
    "is_template",
    "path_segment",
    "to_text",
]

_MARKERS: Final = ("{{", "{%", "{#")


def is_template(value: object) -> bool:
    """Whether ``value`` is a string holding template syntax."""
    return isinstance(value, str) and any(marker in value for marker in _MARKERS)


# --------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------


class _CodeGenerator(NativeCodeGenerator):
    """Native code generator that never folds an expression into text at compile time.

    Jinja folds constant expressions such as ``{{ true }}`` or ``{{ [1, 2] }}`` into their
    text ("True", "[1, 2]"); evaluating them at run time keeps their native type.
    """

    def _output_child_to_const(
        self, node: nodes.Expr, frame: Frame, finalize: NativeCodeGenerator._FinalizeInfo
    ) -> Any:
        if isinstance(node, nodes.TemplateData):
            return node.as_const(frame.eval_ctx)
        raise nodes.Impossible()


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, reading a mapping's keys only.

    Jinja falls back from ``inputs['items']`` to the attribute, and ``inputs.items`` reads
    the attribute first: an input named like a ``dict`` method (Xero's ``items``), when
    absent or always, would render the method. Templates read JSON data, so a mapping's
    keys are all there is to read.
    """

    code_generator_class = _CodeGenerator

    def getitem(self, obj: Any, argument: Any) -> Any:
        """``obj[argument]``; for a mapping, its key or undefined (a mutating method: unsafe)."""
        if not isinstance(obj, Mapping):
            return super().getitem(obj, argument)
        try:
            return obj[argument]
        except (TypeError, LookupError):
            method = getattr(obj, argument, None) if isinstance(argument, str) else None
            if method is not None and not self.is_safe_attribute(obj, argument, method):
                return self.unsafe_undefined(obj, argument)  # SecurityError when used
            return self.undefined(obj=obj, name=argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``obj.attribute``; for a mapping, its key or undefined (never an attribute)."""
        if isinstance(obj, Mapping):
            return self.getitem(obj, attribute)
        return super().getattr(obj, attribute)


#: Kept as is in a path segment: unreserved characters and sub-delimiters but ``;``, which
#: starts path parameters (``..;x`` is ``..`` to Tomcat, Jetty and Spring); ``\`` too is
#: percent-encoded.
_PATH_SAFE = "-._~!$&'()*+,=:@"


#: Segments refused in a URL path: sent even percent-encoded (``%2E%2E``), servers and
#: proxies normalize them back to ``.`` and ``..``, which step to the parent path.
_DOT_SEGMENTS: Final = frozenset({".", ".."})
#: Where servers may cut a decoded segment: ``/``, ``\`` and the ``;`` of path parameters.
_SEGMENT_ENDS: Final = re.compile(r"[/\\;]")


def path_segment(value: Any, *, name: Sequence[str | int] = ()) -> str:
    r"""Finalize of path templates: each ``{{ }}`` is one percent-encoded path segment.

    ``.`` and ``..`` are refused (`ValidationError`): whatever their encoding, servers
    read them as steps in the path; so is a value holding one once decoded and cut at
    ``/``, ``\`` or ``;`` (``..;x``, ``..\``, ``%2e%2e``), spaces around it ignored.
    ``name`` is the JSON path of the value (``("config", "user_id")``), named in the
    error; in a path template the input is found from the template's own references (see
    `CompiledTemplate.render`).
    """
    text = to_text(value)
    if any(part.strip() in _DOT_SEGMENTS for part in _SEGMENT_ENDS.split(unquote(text))):
        raise _DotSegment(text, name)
    return quote(text, safe=_PATH_SAFE)


class _DotSegment(ValidationError):
    """``.`` or ``..`` given as a URL path segment; ``named`` once the value's source is."""

    def __init__(self, text: str, name: Sequence[str | int]) -> None:
        self.segment = text
        self.named = bool(name)
        reason = (
            f"{text!r} cannot be sent as a URL path segment: servers read it as a step in "
            "the path (to the parent path), whatever its encoding"
        )
        if name and name[0] in ("inputs", "config"):
            super().__init__("Input" if name[0] == "inputs" else "Config", name[1:], reason)
        else:
            super().__init__("URL path segment", name, reason)


def _reference(node: nodes.Node) -> tuple[str | int, ...] | None:
    """The variable path ``inputs.a["b"]`` reads, as ``("inputs", "a", "b")``, or None."""
    parts: list[str | int] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str | int)
        ):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None


def _lookup(variables: Mapping[str, Any], path: tuple[str | int, ...]) -> Any:
    """The value at ``path`` in the variables, or None when it is not there."""
    value: Any = variables
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _environment(*, path: bool) -> _Environment:
    env = _Environment(
        undefined=ChainableUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=path_segment if path else None,
    )
    env.filters.update(FILTERS)
    return env


_VALUES = _environment(path=False)
_PATHS = _environment(path=True)


# --------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------


class TemplateProblem(Exception):
    """A template cannot be compiled or uses a name it may not use."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RenderError(Exception):
    """A template failed while rendering; ``location`` is its JSON path in the definition."""

    def __init__(self, location: tuple[str | int, ...], error: Exception) -> None:
        self.location = location
        self.error = error
        detail = str(error)[:200] or type(error).__name__
        super().__init__(f"{type(error).__name__}: {detail}")


class CompiledTemplate:
    """One compiled template and what is known about it from its syntax tree."""

    __slots__ = (
        "names",
        "own_context",
        "references",
        "render_func",
        "single_expression",
        "source",
        "statements",
        "template",
    )

    def __init__(self, source: str, *, path: bool) -> None:
        env = _PATHS if path else _VALUES
        try:
            ast = env.parse(source)
        except TemplateSyntaxError as exc:
            where = f" (line {exc.lineno})" if "\n" in source else ""
            raise TemplateProblem(f"template syntax error{where}: {exc.message}") from None
        self.source = source
        self.names: frozenset[str] = frozenset(find_undeclared_variables(ast))
        # The variable paths read (``inputs.id``), longest first: a refused path segment
        # is reported as the input it came from.
        found = {_reference(node) for node in ast.find_all((nodes.Getattr, nodes.Getitem))}
        self.references: tuple[tuple[str | int, ...], ...] = tuple(
            sorted((r for r in found if r is not None), key=lambda r: (-len(r), str(r)))
        )
        self.statements = any(not isinstance(node, nodes.Output) for node in ast.body)
        self.single_expression = (
            len(ast.body) == 1
            and isinstance(ast.body[0], nodes.Output)
            and len(ast.body[0].nodes) == 1
            and not isinstance(ast.body[0].nodes[0], nodes.TemplateData)
        )
        try:
            code = env.compile(ast)
        except TemplateSyntaxError as exc:  # pragma: no cover - parse already succeeded
            raise TemplateProblem(f"template syntax error: {exc.message}") from None
        self.template: Template = env.template_class.from_code(
            env, code, env.make_globals(None), None
        )
        self.render_func = self.template.root_render_func
        # The shared context belongs to the value environment; path templates (another
        # environment) and templates that may assign variables get their own.
        self.own_context = self.statements or path

    def render(self, scope: Scope) -> Any:
        """Render with the variables of ``scope`` (see the module docstring for the rules).

        A path template whose value is ``.`` or ``..`` raises `ValidationError` naming the
        input (or config value) it read, when one of its references holds that value.
        """
        context = scope.context(self) if self.own_context else scope.shared(self)
        try:
            out = list(self.render_func(context))
        except _DotSegment as exc:
            if exc.named:
                raise
            for reference in self.references:
                if to_text(_lookup(scope.variables, reference)) == exc.segment:
                    raise _DotSegment(exc.segment, reference) from None
            raise
        if not out:
            return None
        if len(out) == 1:
            return out[0]
        return "".join([to_text(part) for part in out])


_CACHE: dict[tuple[bool, str], CompiledTemplate | TemplateProblem] = {}
_CACHE_MAX = 8192


def compile_template(source: str, *, path: bool = False) -> CompiledTemplate:
    """Compile ``source`` once per process (remembered by text); raise `TemplateProblem`.

    ``path=True`` compiles a URL path template, where each ``{{ }}`` is percent-encoded as
    one path segment (an input cannot add ``/``, ``?`` or ``#`` to the path).
    """
    key = (path, source)
    cached = _CACHE.get(key)
    if cached is None:
        try:
            cached = CompiledTemplate(source, path=path)
        except TemplateProblem as problem:
            cached = problem
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = cached
    if isinstance(cached, TemplateProblem):
        raise TemplateProblem(cached.message)
    return cached


class Scope:
    """The variables of one render pass, with a Jinja context shared by its expressions.

    Templates without statements cannot assign variables, so one context serves all of
    them; a template with statements (``{% set %}``...) or a path template gets its own.
    """

    __slots__ = ("_shared", "variables")

    def __init__(self, variables: dict[str, Any]) -> None:
        self.variables = variables
        self._shared: Context | None = None

    def shared(self, compiled: CompiledTemplate) -> Context:
        """The context shared by expression-only templates."""
        if self._shared is None:
            self._shared = compiled.template.new_context(self.variables, shared=True)
        return self._shared

    def context(self, compiled: CompiledTemplate) -> Context:
        """A fresh context for a template with statements."""
        return compiled.template.new_context(self.variables, shared=True)


# --------------------------------------------------------------------------------------
# Template trees
# --------------------------------------------------------------------------------------

Node = Callable[[Scope], Any]
"""A compiled template tree: call it with a `Scope` to render it."""

_JsonPath = tuple[str | int, ...]


class Sink:
    """Collects what compiling template trees finds: problems and the variables used."""

    __slots__ = ("names", "problems")

    def __init__(self) -> None:
        self.problems: list[tuple[_JsonPath, str]] = []
        self.names: set[str] = set()


def _check_names(compiled: CompiledTemplate, allowed: frozenset[str]) -> str | None:
    unknown = sorted(compiled.names - allowed)
    if not unknown:
        return None
    listed = ", ".join(f"'{name}'" for name in unknown)
    return f"unknown variable {listed} (available here: {', '.join(sorted(allowed))})"


def _template_node(location: _JsonPath, compiled: CompiledTemplate) -> Node:
    def render(scope: Scope) -> Any:
        try:
            return compiled.render(scope)
        except ValidationError:
            raise  # an input that cannot be sent, named: not a fault of the template
        except Exception as exc:
            raise RenderError(location, exc) from exc

    return render


def _constant_node(value: Any) -> Node:
    return lambda scope: value


def _dict_node(entries: Iterable[tuple[str, Node]]) -> Node:
    items = tuple(entries)

    def render(scope: Scope) -> Any:
        out: dict[str, Any] = {}
        for key, node in items:
            value = node(scope)
            if value is not None and not isinstance(value, Undefined):
                out[key] = value
        return out

    return render


def _list_node(children: Iterable[Node]) -> Node:
    items = tuple(children)

    def render(scope: Scope) -> Any:
        out = []
        for node in items:
            value = node(scope)
            if value is not None and not isinstance(value, Undefined):
                out.append(value)
        return out

    return render


def compile_one(
    source: str,
    location: _JsonPath,
    allowed: frozenset[str],
    sink: Sink,
    *,
    path: bool = False,
) -> CompiledTemplate | None:
    """Compile one template string; on a problem record it in ``sink`` and return None."""
    try:
        compiled = compile_template(source, path=path)
    except TemplateProblem as problem:
        sink.problems.append((location, problem.message))
        return None
    message = _check_names(compiled, allowed)
    if message is not None:
        sink.problems.append((location, message))
        return None
    sink.names.update(compiled.names)
    return compiled


def compile_tree(
    value: Any,
    location: _JsonPath,
    allowed: frozenset[str],
    sink: Sink,
    *,
    path: bool = False,
) -> Node:
    """Compile a template tree into a `Node`; problems go to ``sink`` with their locations."""
    if isinstance(value, dict):
        return _dict_node(
            (key, compile_tree(child, (*location, key), allowed, sink, path=path))
            for key, child in value.items()
        )
    if isinstance(value, list):
        return _list_node(
            compile_tree(child, (*location, index), allowed, sink, path=path)
            for index, child in enumerate(value)
        )
    if is_template(value):
        compiled = compile_one(value, location, allowed, sink, path=path)
        if compiled is None:
            return _constant_node(None)
        return _template_node(location, compiled)
    return _constant_node(value)
