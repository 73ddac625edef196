"""python/usagewarden/_core.pyi matches the compiled module ``usagewarden._core``.

Every public name of the module is declared in the stub and vice versa, and
every class has the same public methods and properties at runtime and in
the stub (a property must be a property, a method a method).
"""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path

import pytest
import usagewarden
from usagewarden import _core

STUB = Path(usagewarden.__file__).with_name("_core.pyi")


def public(name: str) -> bool:
    return not name.startswith("_")


@pytest.fixture(scope="module")
def stub() -> ast.Module:
    assert STUB.is_file(), f"{STUB} is missing: the stubs for usagewarden._core are not written"
    return ast.parse(STUB.read_text(), filename=str(STUB))


def is_type_alias(node: ast.stmt) -> bool:
    if isinstance(node, ast.AnnAssign) and isinstance(node.annotation, ast.Name | ast.Attribute):
        return ast.unparse(node.annotation).endswith("TypeAlias")
    return type(node).__name__ == "TypeAlias"


def stub_names(module: ast.Module) -> dict[str, ast.stmt]:
    """Public names the stub declares at top level (imports and type aliases excluded)."""
    names: dict[str, ast.stmt] = {}
    for node in module.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if not is_type_alias(node):
                names[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id != "__all__":
                    names[target.id] = node
    return {name: node for name, node in names.items() if public(name)}


def is_property(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        text = ast.unparse(decorator)
        if text in ("property", "builtins.property") or text.endswith((".setter", ".getter")):
            return True
    return False


def stub_members(cls: ast.ClassDef) -> dict[str, str]:
    """Public members of a stub class: name -> "property" | "method" | "attribute"."""
    members: dict[str, str] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            members[node.name] = "property" if is_property(node) else "method"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members[node.target.id] = "attribute"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    members[target.id] = "attribute"
    return {name: kind for name, kind in members.items() if public(name)}


def runtime_members(cls: type) -> dict[str, str]:
    members: dict[str, str] = {}
    for name, value in vars(cls).items():
        if not public(name):
            continue
        if isinstance(value, property | types.GetSetDescriptorType | types.MemberDescriptorType):
            members[name] = "property"
        elif callable(value) or isinstance(value, classmethod | staticmethod):
            members[name] = "method"
        else:
            members[name] = "attribute"
    return members


RUNTIME_NAMES = {name for name in dir(_core) if not (name.startswith("__") and name.endswith("__"))}
RUNTIME_PUBLIC = {name for name in RUNTIME_NAMES if public(name)}
RUNTIME_CLASSES = sorted(name for name in RUNTIME_PUBLIC if inspect.isclass(getattr(_core, name)))


def test_the_runtime_module_has_the_contract_classes() -> None:
    assert {
        "Usage",
        "RateLimits",
        "Limit",
        "ManualClock",
        "UsageHistory",
        "RateLimiter",
        "Decision",
        "Reservation",
    } <= set(RUNTIME_CLASSES)


def test_every_runtime_name_is_in_the_stub(stub) -> None:
    missing = RUNTIME_PUBLIC - set(stub_names(stub))
    assert not missing, f"in usagewarden._core but not in _core.pyi: {sorted(missing)}"


def test_every_stub_name_exists_at_runtime(stub) -> None:
    extra = set(stub_names(stub)) - RUNTIME_NAMES
    assert not extra, f"in _core.pyi but not in usagewarden._core: {sorted(extra)}"


def test_module_attributes_are_declared_as_values_not_classes(stub) -> None:
    declared = stub_names(stub)
    for name in RUNTIME_PUBLIC & set(declared):
        is_class = inspect.isclass(getattr(_core, name))
        assert isinstance(declared[name], ast.ClassDef) == is_class, name


@pytest.mark.parametrize("name", RUNTIME_CLASSES)
def test_class_members_match(stub, name) -> None:
    node = stub_names(stub).get(name)
    assert isinstance(node, ast.ClassDef), f"class {name} is not declared in _core.pyi"
    declared = stub_members(node)
    actual = runtime_members(getattr(_core, name))
    missing = set(actual) - set(declared)
    extra = set(declared) - set(actual)
    assert not missing, f"{name}: not in the stub: {sorted(missing)}"
    assert not extra, f"{name}: in the stub only: {sorted(extra)}"
    for member, kind in actual.items():
        stub_kind = declared[member]
        if kind == "property":
            # A read-only attribute may be stubbed as a property or an annotated attribute.
            assert stub_kind in ("property", "attribute"), f"{name}.{member}: {stub_kind}"
        else:
            assert stub_kind == kind, f"{name}.{member}: {kind} at runtime, {stub_kind} in stub"


def test_the_stub_parses_and_the_package_is_typed() -> None:
    assert Path(usagewarden.__file__).with_name("py.typed").is_file()


#: Protocol methods that decide what a type checker accepts (len(), with, await, +, ...).
PROTOCOL = (
    "__len__",
    "__bool__",
    "__enter__",
    "__exit__",
    "__aenter__",
    "__aexit__",
    "__await__",
    "__iter__",
    "__next__",
    "__add__",
    "__sub__",
)


@pytest.mark.parametrize("name", RUNTIME_CLASSES)
def test_protocol_methods_match(stub, name) -> None:
    node = stub_names(stub).get(name)
    assert isinstance(node, ast.ClassDef), f"class {name} is not declared in _core.pyi"
    declared = {
        n.name
        for n in node.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name in PROTOCOL
    }
    actual = {n for n, v in vars(getattr(_core, name)).items() if n in PROTOCOL and v is not None}
    assert actual == declared, f"{name}: runtime {sorted(actual)} vs stub {sorted(declared)}"
