"""The package's layer order: no module imports from a layer above its own, and no import cycles.

Layers, bottom to top (a module may import from its own layer and the ones below):

0. base: ``errors``, ``_versions``, ``_lazy`` (lazy imports of the media libraries), ``media``, ``parallel``,
   ``config_files``, ``pretrained`` (the weights registry and the frozen-module rule sit here because encoders,
   backbones, metrics and systems all load pretrained parts)
1. ``checkpoint``, ``loggers``, ``diffusion``
2. ``data``, ``samples`` (the sample-folder format: written by systems, read by evaluation)
3. ``backbones``, ``encoders`` (frozen pretrained networks, for conditioning or for metrics)
4. ``modules`` (the trained building blocks of the systems)
5. ``metrics`` (metric math and torchmetrics ``Metric`` classes)
6. ``systems``, ``callbacks``
7. ``evaluation``, ``pipelines`` (``avgen.from_pretrained``: a trained system behind its natural call)
8. ``curation`` (``filter``: thresholds over evaluation scores), ``caching`` (``cache``: a system's frozen features
   over a dataset, for ``data.features``), ``pretraining`` (``pretrain-twins``: the mini twins' training recipe)
9. ``commands``, ``collect`` (``python -m avgen collect``: a table of many runs), ``export`` (pipeline folders and
   their model cards, which read a run's metrics as ``collect`` does), ``app`` (``python -m avgen app``: the web
   page that runs pipelines)
10. ``cli``, ``__main__``, ``sweeps`` (``sweep``: runs the command line's override checks on every row of a sweep
    file; ``cli`` dispatches to it by name)

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = [
    ["avgen", "avgen.errors", "avgen._versions", "avgen._lazy", "avgen.media", "avgen.parallel", "avgen.config_files",
     "avgen.pretrained"],
    ["avgen.checkpoint", "avgen.loggers", "avgen.diffusion"],
    ["avgen.data", "avgen.samples"],
    ["avgen.backbones", "avgen.encoders"],
    ["avgen.modules"],
    ["avgen.metrics"],
    ["avgen.systems", "avgen.callbacks"],
    ["avgen.evaluation", "avgen.pipelines"],
    ["avgen.curation", "avgen.caching", "avgen.pretraining"],
    ["avgen.commands", "avgen.collect", "avgen.export", "avgen.app"],
    ["avgen.cli", "avgen.__main__", "avgen.sweeps"],
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "avgen").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: avgen modules it imports}``, from every import statement (top level or not)."""
    mods = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            edges[name].update(t for t in targets if t in mods and t != name)
    return edges


def layer(module: str) -> int:
    """The index of the most specific layer entry that names ``module`` or a package above it."""
    best, length = None, -1
    for index, names in enumerate(LAYERS):
        for n in names:
            if (module == n or (n != "avgen" and module.startswith(n + "."))) and len(n) > length:
                best, length = index, len(n)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


# The one upward import allowed: ``avgen.from_pretrained``, the package's public entry point, imports
# avgen.pipelines lazily in ``avgen/__init__.py``'s module ``__getattr__`` (``import avgen`` stays light).
FACADE = {("avgen", "avgen.pipelines")}


def test_every_module_has_a_layer_and_imports_only_downwards():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in sorted(import_graph().items()) for b in sorted(targets)
              if layer(b) > layer(a) and (a, b) not in FACADE]
    assert not upward, "\n".join(upward)
    for name in modules():
        layer(name)


def test_no_import_cycles():
    edges = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_check_sees_lazy_imports():
    """The graph holds imports inside functions (the way a back-edge hides), so the check can fail."""
    graph = import_graph()
    assert "avgen.encoders.imagebind" in graph["avgen.metrics.imagebind"]
    assert "avgen.evaluation" in graph["avgen.curation"]  # imported inside score_splits only
    assert layer("avgen.data.subset") < layer("avgen.evaluation") < layer("avgen.curation")


def test_a_blocked_media_import_reads_as_missing(monkeypatch):
    """``sys.modules[name] = None`` (Python's way to make an import fail) gives the same MissingModule, naming the pip
    package, as an uninstalled library; :func:`module_available` agrees with ``import``."""
    import sys

    import pytest

    from avgen._lazy import MissingModule, lazy_module, module_available

    monkeypatch.setitem(sys.modules, "soundfile", None)
    blocked = lazy_module("soundfile", "reading FLAC")
    assert isinstance(blocked, MissingModule)
    with pytest.raises(ModuleNotFoundError, match="avgen needs it for reading FLAC: pip install soundfile"):
        blocked.read
    assert not module_available("soundfile") and module_available("numpy")
    assert not module_available("avgen_no_such_module") and not module_available("avgen_no_such_module.sub")
