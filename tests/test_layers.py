"""The package's structure: imports point downward only, no import cycle, no module over 400 lines.

Layers, lowest first (a module's layer is that of its longest listed prefix). A module may
import its own layer or lower ones, at the top or inside a function alike (imports under
``TYPE_CHECKING`` are annotations, not dependencies).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pathprob"
LAYERS = [
    ("pathprob.errors", "pathprob.files", "pathprob.config", "pathprob.compile_cache", "pathprob.devices",
     "pathprob.distributed"),  # devices: the mesh every engine and the trainer run on
    ("pathprob.data.tokenizer", "pathprob.data.hf_tokenizer"),  # text <-> token ids
    ("pathprob.models", "pathprob.checkpoint"),  # LanguageModels: Transformer, exact truths, pretrained loading
    ("pathprob.data",),  # the languages, each with its exact truth
    ("pathprob.paths",),  # the engines
    ("pathprob.probes", "pathprob.training", "pathprob.train_progress", "pathprob.rundir", "pathprob.loading"),
    ("pathprob.analysis",),
    ("pathprob",),  # the public API (pathprob/__init__.py)
    ("pathprob.plots", "pathprob.report"),
    ("pathprob.demo",),
    ("pathprob.cli",),
]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    matches = [(len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(pathprob modules imported at module level, those imported anywhere), without TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}
    top_level = {id(n) for n in tree.body}
    found, at_top = set(), set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pathprob") and not node.level:
            # ``from M import x``: the submodule M.x when there is one, else an attribute of M (M itself)
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        names = {n for n in names if n.split(".")[0] == "pathprob" and (n in MODULES or n == "pathprob")}
        found |= names
        if id(node) in top_level:
            at_top |= names
    return at_top, found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_downward(module):
    upward = sorted(t for t in imports(MODULES[module])[1] if layer(t) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_no_import_cycle():
    graph = {m: {t for t in imports(p)[0] if t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, m, t]))
            if t not in state:
                visit(t, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by concept"
