"""The package's layout holds: layers, no cycles, one home for Redis key names,
and an architecture page that names only modules that exist."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "labq"

#: Each layer may import its own and lower ranks only (docs/architecture.md).
RANKS = {
    "base": 0,  # settings, errors, keys, outcome, redis_client
    "devices": 1,
    "fairshare": 1,
    "worker": 2,
    "app": 3,
    "client": 4,
    "ops": 5,
    "embedded": 5,
    "entry": 6,  # __init__, __main__, cli
}
BASE = {"labq.settings", "labq.errors", "labq.keys", "labq.outcome", "labq.redis_client"}
ENTRY = {"labq", "labq.__main__", "labq.cli"}
TOP_LEVEL = {"__init__", "__main__", "cli", "app", "settings", "errors", "outcome",
             "redis_client", "keys"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module in ENTRY:
        return "entry"
    if module == "labq.app":
        return "app"
    return module.split(".")[1]


def imports(module: str) -> set[str]:
    """Every labq module ``module`` imports, anywhere in it (functions and
    TYPE_CHECKING blocks too)."""
    path = MODULES[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_the_top_level_holds_only_what_every_layer_shares() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == {"client", "worker", "devices", "fairshare", "ops", "embedded"}
    for name in packages:  # each says what its layer is
        assert ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))


def test_every_module_is_in_a_known_layer() -> None:
    assert {layer(m) for m in MODULES} <= set(RANKS)


def test_no_import_goes_up_a_layer() -> None:
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                    if RANKS[layer(t)] > RANKS[layer(m)])
    assert upward == []


def test_ops_and_the_embedded_lab_do_not_import_each_other() -> None:
    across = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                    if {layer(m), layer(t)} == {"ops", "embedded"})
    assert across == []


def test_there_are_no_import_cycles() -> None:
    # Tarjan's strongly connected components over every import.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []


def test_importing_labq_and_a_task_module_loads_neither_ops_nor_the_embedded_lab() -> None:
    # The client and the worker must not pay for (or depend on) the sim or the admin views.
    code = ("import sys, labq, tasks.device, tasks.diag; "
            "print('\\n'.join(m for m in sys.modules if m.startswith(('labq.ops', 'labq.embedded'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    assert out.stdout.split() == []


def test_every_labq_key_literal_lives_in_keys_py() -> None:
    # A key name has no space after its prefix; a message such as "labq: error: ..." does.
    literal = re.compile(r"""["']labq:[^ "']""")
    found = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]:
        if path == PACKAGE / "keys.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if literal.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_the_registered_drivers_are_the_ones_a_testbed_may_name() -> None:
    from labq.devices.drivers import drivers
    from labq.devices.testbed import DRIVERS

    assert drivers() == tuple(sorted(DRIVERS))


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def named_modules(text: str) -> set[str]:
    """``labq.x.y`` and ``labq/x/y.py`` names in ``text``, as dotted module names
    (a trailing attribute, as in ``labq.client.run.Run``, is dropped)."""
    names = set()
    for dotted in re.findall(r"(?<![\w./])labq(?:\.[A-Za-z_]+)+", text):
        names.add(dotted)
    for path in re.findall(r"(?<![\w./])labq/[a-z_/]+(?:\.py|/)", text):
        names.add(path.removesuffix(".py").removesuffix("/").replace("/", "."))
    return names


def exists(name: str) -> bool:
    """A module, or an attribute of one (``labq.client.run.Run``, ``labq.pcall``)."""
    if name in MODULES:
        return True
    parent, _, attr = name.rpartition(".")
    return parent in MODULES and hasattr(importlib.import_module(parent), attr)


def test_the_architecture_page_names_only_modules_that_exist() -> None:
    missing = sorted(n for n in named_modules(ARCHITECTURE.read_text()) if not exists(n))
    assert missing == []


def test_the_architecture_page_names_every_module() -> None:
    named = {n if n in MODULES else n.rpartition(".")[0] for n in named_modules(ARCHITECTURE.read_text())}
    unnamed = sorted(m for m in MODULES if m not in named and not m.endswith("__main__"))
    assert unnamed == []


def test_the_life_of_a_task_names_a_module_at_every_step() -> None:
    life = ARCHITECTURE.read_text().split("## The life of a device task", 1)[1].split("\n## ", 1)[0]
    steps = re.split(r"\n(?=\d+\. )", "\n" + life)[1:]
    assert len(steps) >= 8
    assert "Run.submit" in steps[0] and "Outcome" in steps[-1]
    for step in steps:
        names = [n for n in named_modules(step) if exists(n) and n != "labq"]
        assert names, f"step names no module: {step[:80]!r}"
