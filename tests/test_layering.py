"""The decision core stays transport-free: no broker, provider, LLM, web or SQL library.

Parsed with ``ast`` (nothing is imported): ``import x.y``, ``from x import y``, imports
inside functions, ``TYPE_CHECKING`` blocks and ``try`` blocks, and ``importlib.import_module``
/ ``__import__`` with a literal name all count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "outreach"
FORBIDDEN = frozenset(
    {"faust", "aiokafka", "twilio", "sendgrid", "openai", "fastapi", "sqlalchemy"}
)


def core_files() -> list[Path]:
    """The modules the layering rule covers (adapters excluded)."""
    files = [
        PACKAGE / "events.py",
        PACKAGE / "eventfields.py",
        PACKAGE / "core.py",
        PACKAGE / "outbound" / "policy.py",
        PACKAGE / "outbound" / "templates.py",
        PACKAGE / "outbound" / "segments.py",
    ]
    for folder in ("rules", "agents"):
        files += [
            p
            for p in sorted((PACKAGE / folder).rglob("*.py"))
            if "adapters" not in p.relative_to(PACKAGE).parts
        ]
    return files


def module_name(path: Path, package: Path = PACKAGE) -> tuple[str, bool]:
    """(dotted module name, is a package) of a file under ``package``."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports(source: str, module: str = "outreach.x", is_package: bool = False) -> set[str]:
    """Every module name ``source`` imports, relative imports resolved against ``module``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                names.add(str(first.value))
    return names


def forbidden(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in FORBIDDEN}


def offences(path: Path, package: Path = PACKAGE) -> set[str]:
    module, is_package = module_name(path, package)
    return forbidden(imports(path.read_text(), module, is_package))


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_core_modules_import_no_transport_provider_or_sql_library(path: Path) -> None:
    assert offences(path) == set()


def test_the_covered_set_is_what_the_architecture_names() -> None:
    names = {module_name(p)[0] for p in core_files()}
    assert {
        "outreach.events",
        "outreach.core",
        "outreach.rules",
        "outreach.rules.evaluate",
        "outreach.agents",
        "outreach.agents.executor",
        "outreach.agents.guardrails",
        "outreach.agents.playbooks",
        "outreach.agents.playbooks.payment_recovery",
        "outreach.outbound.policy",
        "outreach.outbound.templates",
        "outreach.outbound.segments",
    } <= names


def reachable(start: list[Path]) -> dict[str, set[str]]:
    """Module -> forbidden imports, over everything the core modules import from outreach."""
    files = {module_name(p)[0]: p for p in PACKAGE.rglob("*.py")}
    todo = [module_name(p)[0] for p in start]
    seen: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        if name in seen or name not in files:
            continue
        path = files[name]
        found = imports(path.read_text(), name, path.name == "__init__.py")
        seen[name] = forbidden(found)
        todo += [n for n in found if n.startswith("outreach")]
    return seen


def test_nothing_the_core_imports_from_the_package_reaches_those_libraries() -> None:
    seen = reachable(core_files())
    assert "outreach.rulebook" in seen and "outreach.decisions" in seen
    assert {name: bad for name, bad in seen.items() if bad} == {}


# -- the checker itself must be able to fail --------------------------------------------------


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import faust", {"faust"}),
        ("import twilio.rest", {"twilio.rest"}),
        ("import json, aiokafka as kafka", {"aiokafka"}),
        ("from sendgrid import SendGridAPIClient", {"sendgrid", "sendgrid.SendGridAPIClient"}),
        ("from sqlalchemy.orm import Session", {"sqlalchemy.orm", "sqlalchemy.orm.Session"}),
        ("def send():\n    import openai\n    return openai", {"openai"}),
        (
            "class A:\n    def f(self):\n        from fastapi import FastAPI",
            {"fastapi", "fastapi.FastAPI"},
        ),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import faust", {"faust"}),
        ("try:\n    import aiokafka\nexcept ImportError:\n    pass", {"aiokafka"}),
        ("import importlib\nimportlib.import_module('twilio')", {"twilio"}),
        ("x = __import__('sqlalchemy')", {"sqlalchemy"}),
        ("import faustish, json\nfrom openai_like import x", set()),
        ("from . import faust", set()),  # a sibling module named faust, not the library
    ],
)
def test_the_checker_finds_every_form_of_import(source: str, caught: set[str]) -> None:
    assert forbidden(imports(source, "outreach.agents.llm")) == caught


def test_relative_imports_resolve_inside_the_package() -> None:
    assert imports("from ..outbound import policy", "outreach.agents.executor") == {
        "outreach.outbound",
        "outreach.outbound.policy",
    }
    assert imports("from .base import Params", "outreach.agents.playbooks", True) == {
        "outreach.agents.playbooks.base",
        "outreach.agents.playbooks.base.Params",
    }


def test_a_module_file_with_an_offending_import_is_reported(tmp_path: Path) -> None:
    package = tmp_path / "outreach"
    module = package / "agents" / "sms.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from __future__ import annotations\n\n"
        "def send(text: str) -> None:\n"
        "    from twilio.rest import Client\n"
        "    Client().messages.create(body=text)\n"
    )
    assert offences(module, package) == {"twilio.rest", "twilio.rest.Client"}
