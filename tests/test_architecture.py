"""The package's layout: imports point one way, down the data flow, and form no cycle.

Each subpackage is a stage; a module may import its own stage and the stages before it,
never a later one (ARCHITECTURE.md draws the flow). `training` and `sampling` are siblings:
neither imports the other.
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "madad_jax"

# Stage of each top-level name under madad_jax/, lowest first; siblings share a rank.
RANK = {
    "core": 0,
    "data": 1,
    "models": 2,
    "config": 3,
    "diffusion": 4,
    "training": 5,
    "sampling": 5,
    "evaluation": 6,
    "interop": 7,
    "tools": 8,
}
TOP = 9  # main.py, the public shims (analysis, import_reference, export_reference, bench)


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "<top>"


def _imports(path: Path, module: str) -> set[str]:
    """Every madad_jax module `path` imports, at module level or inside functions."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("madad_jax")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("madad_jax"):
                continue
            for a in node.names:  # `from madad_jax.x import y` may name a module y
                sub = f"{base}.{a.name}"
                out.add(sub if _exists(sub) else base)
    return out


def _exists(module: str) -> bool:
    p = PKG.parent.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p, _module(p)) for p in sorted(PKG.rglob("*.py"))}


def test_every_stage_is_known():
    stages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert stages <= set(RANK), f"add {sorted(stages - set(RANK))} to RANK and ARCHITECTURE.md"


def test_imports_point_down_the_flow():
    upward = []
    for mod, deps in _graph().items():
        here = RANK.get(_stage(mod), TOP)
        for dep in deps:
            there = RANK.get(_stage(dep), TOP)
            sibling = there == here and _stage(dep) != _stage(mod)
            if there > here or sibling:
                upward.append(f"{mod} -> {dep}")
    assert not upward, "imports against the flow:\n" + "\n".join(sorted(upward))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of modules in `graph` (a package importing its own submodules is none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d == m or d.startswith(m + ".") or m.startswith(d + "."):
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    keys = _graph_keys()
    graph = {m: {d for d in deps if d in keys} for m, deps in _graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == [
        "a.x", "a.y", "a.z", "a.x"]
    assert find_cycle({"a": {"a.x"}, "a.x": {"a.y"}, "a.y": set()}) is None


def _graph_keys() -> set[str]:
    return {_module(p) for p in PKG.rglob("*.py")}


def test_the_check_sees_an_upward_import(tmp_path):
    """The walker resolves `from madad_jax.x import module` and relative imports."""
    src = tmp_path / "probe.py"
    src.write_text("from madad_jax.evaluation import metrics\nfrom . import sources\n")
    deps = _imports(src, "madad_jax.data.probe")
    assert {"madad_jax.evaluation.metrics", "madad_jax.data.sources"} <= deps
    assert RANK[_stage("madad_jax.evaluation.metrics")] > RANK[_stage("madad_jax.data.probe")]


# --- Size: no module over MAX_MODULE_LINES and no function over MAX_FUNCTION_LINES. ---

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# The exceptions, each with the reason it stays (ARCHITECTURE.md repeats them).
OVERSIZE: dict[str, str] = {
    "madad_jax/evaluation/volume_metrics.py": "the per-volume protocol of Behrendt et al. in "
                                              "one place; evaluation is changing on main",
}


def oversize(path: Path, text: str) -> list[tuple[str, int]]:
    """`(name, lines)` of `path` itself and of each function in it over the limits."""
    rel = path.as_posix()
    out = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        out.append((rel, lines))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append((f"{rel}::{node.name}", n))
    return out


def test_no_module_or_function_is_too_long():
    root = PKG.parent
    found = [(name, n) for p in sorted(PKG.rglob("*.py"))
             for name, n in oversize(p.relative_to(root), p.read_text())]
    over = [f"{name}: {n} lines" for name, n in found if name not in OVERSIZE]
    assert not over, (f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a "
                      "function (split it, or add it to OVERSIZE with the reason):\n"
                      + "\n".join(over))
    stale = sorted(set(OVERSIZE) - {name for name, _ in found})
    assert not stale, f"no longer oversize, remove from OVERSIZE: {stale}"


def test_the_size_check_finds_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert oversize(Path("m.py"), f"def f():\n{body}\n") == [("m.py::f", MAX_FUNCTION_LINES + 1)]
    assert oversize(Path("m.py"), "x = 1\n" * (MAX_MODULE_LINES + 1)) == [
        ("m.py", MAX_MODULE_LINES + 1)]
    assert oversize(Path("m.py"), "def f():\n    pass\n") == []
