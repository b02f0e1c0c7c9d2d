"""The package's shape: layers that import only downwards, and no import cycle.

The import graph is computed from the source (every ``import``, those inside functions too), so
a lazy import cannot hide an upward arrow.  ``LAYERS`` is the table of contents of
``minidiff/`` (README, "How to read it"): each line may import from its own line and the lines
above it, never from a line below.  The one knot allowed is tensor <-> ops: an op builds
Tensors, and a Tensor's operators are ops.
"""
import ast
import collections
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "minidiff"

#: lowest first; a module belongs to the first prefix it matches (longest prefixes first)
LAYERS = (
    ("minidiff.errors", "minidiff.progress"),
    ("minidiff.backend",),
    ("minidiff", "minidiff.tensor", "minidiff.ops"),
    ("minidiff.gradcheck", "minidiff.nn", "minidiff.optim"),
    ("minidiff.models", "minidiff.diffusion"),
    ("minidiff.data",),
    ("minidiff.config",),
    ("minidiff.checkpoint",),
    ("minidiff.pipelines",),
    ("minidiff.train", "minidiff.evaluate", "minidiff.bench"),
    ("minidiff.commands", "minidiff.__main__"),
)
ALLOWED_CYCLES = [{"minidiff.tensor", "minidiff.ops"}]
#: imports inside functions are kept for optional or slow-to-import libraries only (and for
#: the CuPy simulator, which a plain ``import minidiff`` does not load)
LAZY_LIBRARIES = {"matplotlib", "PIL", "mpi4py", "cupy", "cupyx", "torch", "resource",
                  "threadpoolctl", "tracemalloc"}
MAX_LOOSE_MODULES = 8


def _modules() -> dict:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph():
    """``(edges, lazy)``: module -> the minidiff modules it imports (lazily or not), and
    ``(module, line, what)`` of every import inside a function."""
    modules = _modules()
    edges, lazy = collections.defaultdict(set), []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        inside = {id(node) for fn in ast.walk(tree)
                  if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                names = [f"{base}.{alias.name}" for alias in node.names] or [base]
            else:
                continue
            if id(node) in inside:
                lazy.append((module, node.lineno, names[0]))
            for name in names:
                if name.split(".")[0] == "minidiff":
                    target = _resolve(name, modules)
                    if target and target != module:
                        edges[module].add(target)
    return edges, lazy


def layer_of(module: str) -> int:
    best = None
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + ".") and prefix != "minidiff":
                if best is None or len(prefix) > best[1]:
                    best = (number, len(prefix))
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[0]


def _cycles(edges) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def _knot(component) -> bool:
    """A component inside the tensor <-> ops knot (ops' submodules count as ops)."""
    return all(m == "minidiff.tensor" or m == "minidiff.ops" or m.startswith("minidiff.ops.")
               for m in component)


def test_every_import_points_to_the_same_or_a_lower_layer():
    edges, _ = import_graph()
    upward = [f"{source} (layer {layer_of(source)}) imports {target} "
              f"(layer {layer_of(target)})"
              for source, targets in sorted(edges.items()) for target in sorted(targets)
              if layer_of(target) > layer_of(source)]
    assert not upward, "imports that point up the layer table:\n" + "\n".join(upward)


def test_no_import_cycle_but_the_tensor_ops_knot():
    edges, _ = import_graph()
    cycles = [sorted(c) for c in _cycles(edges) if not _knot(c)]
    assert not cycles, f"import cycles: {cycles}"


def test_imports_inside_functions_are_for_optional_or_slow_libraries_only():
    _, lazy = import_graph()
    ours = [f"{module}:{line} {name}" for module, line, name in lazy
            if name.split(".")[0] not in LAZY_LIBRARIES
            and not _knot({module, name.rpartition(".")[0]})        # inside the knot
            and not (module, name) == ("minidiff.backend", "minidiff.backend.cupysim")]
    assert not ours, "imports inside functions (hoist them to the top):\n" + "\n".join(ours)
    assert len(lazy) <= 30, f"{len(lazy)} imports inside functions"


def test_the_package_reads_as_a_table_of_contents():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= MAX_LOOSE_MODULES, f"{len(loose)} loose modules: {loose}"
    for module in _modules():
        layer_of(module)                  # every module has its place in LAYERS


def test_the_check_catches_an_upward_import_and_a_cycle():
    """The checks can fail: an import from a higher layer and a two-module cycle."""
    edges = {"minidiff.data.mnist": {"minidiff.pipelines.load"},
             "minidiff.pipelines.load": {"minidiff.data.mnist"}}
    assert layer_of("minidiff.pipelines.load") > layer_of("minidiff.data.mnist")
    assert _cycles(edges) == [{"minidiff.data.mnist", "minidiff.pipelines.load"}]
    assert _knot({"minidiff.tensor", "minidiff.ops.arith"})
    assert not _knot({"minidiff.tensor", "minidiff.nn.module"})
