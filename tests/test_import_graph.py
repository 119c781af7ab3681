"""The import graph is the architecture (docs/architecture.md): this test enforces it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = ("kernel", "consent", "node", "broker", "accord")
ALLOWED: dict[str, set[str]] = {
    "kernel": set(),
    "consent": {"kernel"},
    "node": {"kernel", "consent"},
    "broker": {"kernel", "consent"},
    "accord": {"kernel", "consent", "node", "broker"},
}
# Domain code is plain Python: no transport, no SQL, no generated stubs.
DOMAIN_MODULES = ("node/normalize.py", "node/records.py", "kernel/crypto.py")
FORBIDDEN_IN_DOMAIN = ("grpc", "sqlalchemy", "sqlmodel", "alembic", "kernel.wire")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def python_files(package: str) -> list[Path]:
    return [p for p in (REPO / package).rglob("*.py") if "wire" not in p.relative_to(REPO).parts]


@pytest.mark.parametrize("package", OURS)
def test_package_imports_only_what_the_graph_allows(package: str) -> None:
    bad = []
    for path in python_files(package):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in OURS and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(REPO)} imports {module}")
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("relative", DOMAIN_MODULES)
def test_domain_modules_are_free_of_transport_and_sql(relative: str) -> None:
    modules = imported_modules(REPO / relative)
    bad = sorted(m for m in modules for f in FORBIDDEN_IN_DOMAIN if m == f or m.startswith(f + "."))
    assert not bad, f"{relative} imports {bad}"


def test_only_the_crypto_module_touches_hazmat() -> None:
    users = sorted(
        str(path.relative_to(REPO))
        for package in OURS
        for path in python_files(package)
        if any(m.startswith("cryptography.hazmat") for m in imported_modules(path))
    )
    assert users == ["kernel/crypto.py"]


def test_the_checker_sees_a_forbidden_edge(tmp_path: Path) -> None:
    # Positive control: a node module importing the broker must be caught.
    planted = tmp_path / "bad.py"
    planted.write_text("def f():\n    from broker import errors\n", encoding="utf-8")
    assert "broker" in imported_modules(planted)
