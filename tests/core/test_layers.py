"""The package's layers: no import cycles, and no layer imports one above it.

Every module under p2pckpt/ is parsed (not imported); its imports count
wherever they are, at the top or inside a function, except under
``if TYPE_CHECKING:``. A node is a subpackage (``store``, ``transfer``...) or
a top-level module (``errors``, ``config``, ``publish``...).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "p2pckpt"

# Bottom to top. A node imports only nodes of lower layers (never its own
# layer's neighbours, never anything above).
LAYERS: list[tuple[str, ...]] = [
    ("errors",),  # the exception tree
    ("fs", "net", "logs"),  # leaf helpers: durable files and renames; pacing, limits, listeners
    ("identity",),  # node keys, peer IDs, the trust store
    ("manifest",),  # chunking, signed manifests, safe paths
    ("wire", "store"),  # messages and framing; local copies (catalog, staging, healing)
    ("channel", "config", "home"),  # the encrypted stream; settings; a node's home
    ("relay",),  # relay protocol, server and client
    ("transfer", "pairing"),  # serving and pulling; pairing by a code
    ("discovery",),  # mDNS and finding peers to connect to
    ("interop", "replicas"),  # the Hugging Face cache; waiting for replicas
    ("publish",),  # publishing a version (from a folder or a hub cache snapshot)
    ("multihost",),  # one version over several hosts' files (issue 21 item 2)
    ("daemon", "api"),  # the long-running node; the Python API
    ("hooks",),  # training-framework callbacks (on the API)
    ("cli",),  # the command line: nothing but the entry points imports it
    ("__main__", "__init__"),  # entry points: ``python -m p2pckpt``; lazy p2pckpt.publish/pull
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _resolve(name: str) -> str | None:
    """The p2pckpt module ``name`` loads (its longest known prefix), if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[str]:
    """The p2pckpt modules ``module`` imports at run time."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            # ``from p2pckpt.store import journal`` imports the module store.journal
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name) if name.startswith("p2pckpt") else None
            if target is not None and target != module:
                yield target


def _node(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULE_EDGES = {module: set(_imports(module)) for module in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_parser_sees_known_imports() -> None:
    """A guard on the test itself: top-level, function-local and ``from X import module``."""
    assert "p2pckpt.store.journal" in MODULE_EDGES["p2pckpt.store.staging"]
    assert "p2pckpt.api" in MODULE_EDGES["p2pckpt.__init__"]  # inside a function
    assert "p2pckpt.wire.bitfield" in MODULE_EDGES["p2pckpt.transfer.schedule"]


def test_every_node_has_a_layer() -> None:
    layered = [node for layer in LAYERS for node in layer]
    assert len(layered) == len(set(layered)), "a node is listed twice"
    nodes = {_node(module) for module in MODULES}
    assert nodes - set(layered) == set(), "new subpackages or top-level modules need a layer"
    assert set(layered) - nodes == set(), "LAYERS names something that no longer exists"


def test_no_cycle_between_subpackages() -> None:
    edges: dict[str, set[str]] = {}
    for module, targets in MODULE_EDGES.items():
        edges.setdefault(_node(module), set()).update(
            _node(t) for t in targets if _node(t) != _node(module)
        )
    cycles = _cycles(edges)
    assert cycles == [], f"subpackages importing each other: {cycles}"


def test_no_cycle_between_modules() -> None:
    cycles = _cycles(MODULE_EDGES)
    assert cycles == [], f"modules importing each other: {cycles}"


def test_no_layer_imports_upward() -> None:
    level = {node: i for i, layer in enumerate(LAYERS) for node in layer}
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in MODULE_EDGES.items()
        for target in targets
        if _node(target) != _node(module) and level[_node(target)] >= level[_node(module)]
    )
    assert upward == [], "imports of a layer not below:\n" + "\n".join(upward)
