"""The shape of the code: no import cycles, no private names across modules, tasks only behind their contract.

`lint-imports` (run by `make test`) checks the lines that must not be crossed; these tests check what it cannot
express: cycles between modules (imports inside functions count), private imports, thin `__init__` files, and
what a server process really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

from tunesmith.tasks import TASKS

SRC = Path(__file__).resolve().parents[1] / "src" / "tunesmith"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(("tunesmith", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_even_through_imports_inside_functions() -> None:
    graph = grimp.build_graph("tunesmith", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_no_private_name_is_imported_from_another_module() -> None:
    offences = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunesmith"):
                offences += [f"{name}: from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and a.name != "__version__"]  # fmt: skip
    assert offences == []


def test_init_files_only_re_export() -> None:
    """`__init__.py` holds a docstring, imports and `__all__` (and, in `serving`, a lazy `__getattr__` so the CLI
    builds its flags without importing FastAPI); the code lives in modules named for their concern."""
    for path in SRC.rglob("__init__.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            allowed = isinstance(node, ast.Import | ast.ImportFrom) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            ) or (isinstance(node, ast.Assign) and all(
                isinstance(t, ast.Name) and t.id in ("__all__", "__version__") for t in node.targets
            )) or (isinstance(node, ast.FunctionDef) and node.name == "__getattr__")  # fmt: skip
            assert allowed, f"{path.relative_to(SRC)} line {node.lineno}: {ast.unparse(node)[:80]}"


def test_task_names_appear_only_inside_their_task() -> None:
    """No `if task == ...` outside `tasks/`: the rest of the code asks the task. The run config's default task
    and the task of artifacts from before tasks were recorded are the two places a name is a setting."""
    names = set(TASKS)
    allowed = {"tunesmith.config", "tunesmith.artifact"}
    found = []
    for module, tree in _modules().items():
        if module.startswith("tunesmith.tasks") or module in allowed:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{module} line {node.lineno}: {node.value!r}")
    assert found == []


def test_every_task_package_is_registered() -> None:
    packages = {p.name for p in (SRC / "tasks").iterdir() if (p / "__init__.py").is_file()}
    registered = {type(task).__module__.split(".")[2] for task in TASKS.values()}
    assert packages == registered


def test_a_server_process_loads_no_training_code() -> None:
    """Serving imports the task registry, never what trains: importing the app loads no torch, transformers,
    training, tuning, few-shot or quality code (an ONNX model is then served without them, see test_export)."""
    script = (
        "import sys, tunesmith.serving.app, tunesmith.serving.generation; "
        "print(sorted(m for m in sys.modules if m in ('torch', 'transformers', 'peft', 'optuna', 'setfit', "
        "'tunesmith.training', 'tunesmith.tuning', 'tunesmith.quality') or m.endswith(('.training', '.fewshot'))))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
