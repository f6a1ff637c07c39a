"""The kernel (services/) imports nothing above it: not a service, the console or a tool.

Checked on the source with ``ast``, so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABOVE_THE_KERNEL = {"listener", "generator", "notifier", "fileserver", "console", "tools"}


def imported(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, ``importlib.import_module("...")`` too.
    Relative imports are left out: from inside the top-level package services/ they cannot
    leave it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append((node.lineno, node.module or ""))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def upward_imports(root: Path) -> list[str]:
    wrong = []
    for path in sorted((root / "services").rglob("*.py")):
        for line, module in imported(path.read_text(encoding="utf-8")):
            if module.split(".")[0] in ABOVE_THE_KERNEL:
                wrong.append(f"{path.relative_to(root)}:{line} imports {module}")
    return wrong


def test_the_kernel_imports_nothing_above_it() -> None:
    assert upward_imports(ROOT) == []


def test_the_check_sees_every_form_of_import(tmp_path) -> None:
    kernel = tmp_path / "services" / "sub"
    kernel.mkdir(parents=True)
    (kernel / "a.py").write_text("import os\nimport tools.cli\n"
                                 "def f():\n    from fileserver import settings\n")
    (kernel / "b.py").write_text("from services import bus\nfrom . import c\n"
                                 "importlib.import_module('console.main')\n")
    assert upward_imports(tmp_path) == ["services/sub/a.py:2 imports tools.cli",
                                        "services/sub/a.py:4 imports fileserver",
                                        "services/sub/b.py:3 imports console.main"]
