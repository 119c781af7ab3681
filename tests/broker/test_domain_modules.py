"""The broker's domain modules are plain Python: no transport, no SQL, no generated stubs.

(The repository-wide graph test, tests/test_import_graph.py, covers the package edges.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BROKER = Path(__file__).resolve().parents[2] / "broker"
DOMAIN = ("catalog.py", "matching.py", "revocations.py", "witness.py")
FORBIDDEN = ("grpc", "sqlalchemy", "sqlmodel", "alembic", "kernel.wire", "node")


def imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", DOMAIN)
def test_domain_module_imports_no_transport_or_sql(module: str) -> None:
    bad = sorted(
        name
        for name in imported(BROKER / module)
        for forbidden in FORBIDDEN
        if name == forbidden or name.startswith(forbidden + ".")
    )
    assert not bad, f"broker/{module} imports {bad}"
