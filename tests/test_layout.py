"""The package layout holds: no import cycles, the runtime never imports the tooling or the test support, the
generation loop knows no file format, the audio side never imports the DiT, and the test session imports one copy of
the core (whatever the checkout folder is called)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import flashhead_core

PACKAGE = Path(flashhead_core.__file__).parent
TOOLING = ("flashhead_core.tools", "flashhead_core.testing")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """{module: modules of flashhead_core it imports}, function-local imports included, `from . import x` resolved
    to the submodule x where it is one."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                edges |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flashhead_core"):
                edges.add(node.module)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("flashhead_core")}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_cycles():
    graph = _imports()
    assert len(graph) > 30  # the walk found the package
    cycles = sorted(m for m in graph if m in _reachable(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_runtime_never_imports_tooling_or_test_support():
    graph = _imports()
    runtime = [m for m in graph if not m.startswith(TOOLING) and m not in ("flashhead_core.__main__",)]
    leaks = {m: sorted(e for e in graph[m] if e.startswith(TOOLING)) for m in runtime}
    assert not {m: e for m, e in leaks.items() if e}


def test_generation_loop_knows_no_file_format_and_audio_no_dit():
    graph = _imports()
    for loop in ("flashhead_core.generation.session", "flashhead_core.generation.chunks", "flashhead_core.generation.sampler"):
        assert "flashhead_core.media.video_io" not in _reachable(graph, loop) | {loop}
        assert "import av" not in (PACKAGE.parent / f"{loop.replace('.', '/')}.py").read_text()
    for audio in [m for m in graph if m.startswith("flashhead_core.audio")]:
        reached = _reachable(graph, audio)
        assert not reached & {"flashhead_core.model", "flashhead_core.checkpoint", "flashhead_core.media.video_io"}, audio


def test_one_copy_of_the_core_is_imported():
    copies = [name for name in sys.modules if name.endswith(".flashhead_core") or name.endswith(".nodes._host")]
    assert not copies, f"the pack was imported a second time under its folder name: {copies}"
    assert Path(sys.modules["flashhead_core"].__file__).parent == PACKAGE


HOST_OWNED = {"torch", "comfy", "comfy_api", "folder_paths", "server"}  # the host (ComfyUI or the user) provides these
DISTRIBUTION = {"PIL": "pillow", "cv2": "opencv_python_headless"}  # import name -> package name where they differ


def _requirement_names(lines) -> set[str]:
    return {re.split(r"[<>=!~ ;\[]", line.strip())[0].lower().replace("-", "_") for line in lines
            if line.strip() and not line.lstrip().startswith("#")}


def test_what_is_imported_is_declared_and_what_is_declared_is_imported():
    repo = PACKAGE.parent
    imported = set()
    for path in [*PACKAGE.rglob("*.py"), *(repo / "nodes").rglob("*.py"), repo / "__init__.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - HOST_OWNED - {"flashhead_core", "__future__"}
    needed = {DISTRIBUTION.get(name, name).lower() for name in third_party}
    requirements = _requirement_names((repo / "requirements.txt").read_text().splitlines())
    assert needed == requirements
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert _requirement_names(project["dependencies"]) == requirements
