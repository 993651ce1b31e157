"""The domain core stays pure: no I/O library may be imported from pbxbrain.domain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "src" / "pbxbrain" / "domain"
FORBIDDEN = {"asyncio", "aiohttp", "sqlalchemy", "panoramisk", "socket", "subprocess",
             "requests", "time", "random", "os", "pbxbrain.adapters", "pbxbrain.app",
             "pbxbrain.service", "pbxbrain.api"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(DOMAIN.glob("*.py")), ids=lambda p: p.name)
def test_given_a_domain_module_then_it_imports_no_io(path: Path) -> None:
    bad = {n for n in _imports(path) if n in FORBIDDEN or n.split(".")[0] in FORBIDDEN
           or any(n.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}: the domain core must stay pure"


def test_the_purity_check_itself_catches_an_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom sqlalchemy import select\n")
    assert _imports(bad) >= {"asyncio", "sqlalchemy"}
