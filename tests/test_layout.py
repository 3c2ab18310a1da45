"""The package layout holds: no import cycles; the runtime never imports the tooling or the test support; the
generation loop knows no file format; the audio side never imports the DiT; the stream library never imports the
serve app; the nodes and the CLI use the core's public API only; release names live in release.py; the nodes raise
InputError, not plain ValueError, for what a user can fix; one chunk loop; and the test session imports one copy of
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


def _path(module: str) -> Path:
    folder = PACKAGE.parent / module.replace(".", "/")
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")


def _third_party(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a file: `import av`, `import av.video` and `from av import x`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_import_scan_sees_both_forms(tmp_path):
    (tmp_path / "a.py").write_text("from av import open as av_open\nimport soxr.x\nfrom . import sibling\n")
    assert _third_party(tmp_path / "a.py") == {"av", "soxr"}


def test_generation_loop_knows_no_file_format_and_audio_no_dit():
    graph = _imports()
    loop = [m for m in graph if m.startswith("flashhead_core.generation")]
    assert "flashhead_core.generation.run" in loop
    for module in loop:
        assert "flashhead_core.media.video_io" not in _reachable(graph, module) | {module}, module
        assert "av" not in _third_party(_path(module)), module
    for audio in [m for m in graph if m.startswith("flashhead_core.audio")]:
        reached = _reachable(graph, audio)
        assert not reached & {"flashhead_core.model", "flashhead_core.checkpoint", "flashhead_core.media.video_io"}, audio


def test_the_stream_library_never_imports_the_serve_app_or_the_model():
    graph = _imports()
    for module in [m for m in graph if m.startswith("flashhead_core.live")]:
        reached = _reachable(graph, module)
        assert not {m for m in reached if m.startswith(("flashhead_core.serve", "flashhead_core.generation"))}, module
        assert "flashhead_core.model" not in reached, module


PUBLIC = {"flashhead_core", "flashhead_core.live"}  # the core's public API: the package root, the stream library


def _core_imports_of(path: Path, package: str) -> set[str]:
    """The flashhead_core modules a file outside the core (or the CLI inside it) imports, resolved from its own
    relative imports (`from ..flashhead_core.x import` in the nodes, `from ..x import` in tools/cli.py)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            found.add(f"{base}.{node.module}" if node.module else base)
    return {m.removeprefix("pack.") for m in found if m.removeprefix("pack.").startswith("flashhead_core")}


def test_the_nodes_and_the_cli_use_the_public_api_only():
    nodes = PACKAGE.parent / "nodes"
    for path in nodes.glob("*.py"):
        assert _core_imports_of(path, "pack.nodes") <= PUBLIC, path.name
    cli = _core_imports_of(PACKAGE / "tools" / "cli.py", "flashhead_core.tools")
    core = {m for m in cli if not m.startswith("flashhead_core.tools")}  # its sibling tools are tooling, not core
    assert core <= PUBLIC | {"flashhead_core.serve", "flashhead_core.testing"}, core


RELEASE_NAMES = ("SoulX-FlashHead-1_3B", "Model_Lite", "Model_Pro", "VAE_Wan", "VAE_LTX", "Wan2.1_VAE.pth",
                 "wav2vec2-base-960h", "diffusion_pytorch_model.safetensors")


def _code_strings(path: Path) -> list[str]:
    """The string constants of a file's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_release_names_come_from_release_py():
    runtime = [p for p in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "nodes").glob("*.py")]
               if not p.is_relative_to(PACKAGE / "testing") and not p.is_relative_to(PACKAGE / "tools")
               and p != PACKAGE / "release.py"]
    literals = {str(p.relative_to(PACKAGE.parent)): [s for s in _code_strings(p) if s in RELEASE_NAMES]
                for p in runtime}
    assert not {p: names for p, names in literals.items() if names}


def test_the_nodes_raise_input_errors_for_what_a_user_can_fix():
    for path in (PACKAGE.parent / "nodes").glob("*.py"):
        raised = [node.exc.func.id for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                  and isinstance(node.exc.func, ast.Name)]
        assert "ValueError" not in raised, path.name


def test_one_chunk_loop():
    """generate_chunk(s) is called by the loop (generation/run.py) and the session itself, nowhere else at runtime:
    every variant (files, ComfyUI, live, continuation, timeline, batches) goes through ChunkRun."""
    runtime = [p for p in [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "nodes").glob("*.py")]
               if not p.is_relative_to(PACKAGE / "testing") and not p.is_relative_to(PACKAGE / "tools")]
    callers = set()
    for path in runtime:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)) and \
                    getattr(node.func, "attr", getattr(node.func, "id", None)) in ("generate_chunk", "generate_chunks"):
                callers.add(str(path.relative_to(PACKAGE.parent)))
    assert callers == {"flashhead_core/generation/run.py", "flashhead_core/generation/session.py"}


def test_one_copy_of_the_core_is_imported():
    copies = [name for name in sys.modules if name.endswith(".flashhead_core") or name.endswith(".nodes._host")]
    assert not copies, f"the pack was imported a second time under its folder name: {copies}"
    assert Path(sys.modules["flashhead_core"].__file__).parent == PACKAGE


HOST_OWNED = {"torch", "comfy", "comfy_api", "folder_paths", "server"}  # the host (ComfyUI or the user) provides these
DISTRIBUTION = {"PIL": "pillow", "cv2": "opencv_python_headless", "pipecat": "pipecat_ai"}  # import name -> package name where they differ


def _requirement_names(lines) -> set[str]:
    return {re.split(r"[<>=!~ ;\[]", line.strip())[0].lower().replace("-", "_") for line in lines
            if line.strip() and not line.lstrip().startswith("#")}


INTEGRATIONS = PACKAGE / "integrations"  # optional: each imported only by those who installed its extra


def _imported(paths) -> set[str]:
    third_party = set().union(*(_third_party(path) for path in paths))
    return third_party - set(sys.stdlib_module_names) - HOST_OWNED - {"flashhead_core", "__future__"}


def test_what_is_imported_is_declared_and_what_is_declared_is_imported():
    repo = PACKAGE.parent
    runtime = [p for p in [*PACKAGE.rglob("*.py"), *(repo / "nodes").rglob("*.py"), repo / "__init__.py"]
               if not p.is_relative_to(INTEGRATIONS)]
    needed = {DISTRIBUTION.get(name, name).lower() for name in _imported(runtime)}
    requirements = _requirement_names((repo / "requirements.txt").read_text().splitlines())
    assert needed == requirements
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert _requirement_names(project["dependencies"]) == requirements
    # The integrations (pipecat) need what the `conversation` extra installs, beyond the requirements.
    extra = {DISTRIBUTION.get(name, name).lower() for name in _imported(INTEGRATIONS.rglob("*.py"))} - requirements
    assert extra == _requirement_names(project["optional-dependencies"]["conversation"])
    graph = _imports()
    assert not [m for m in graph if not m.startswith("flashhead_core.integrations")
                and any(e.startswith("flashhead_core.integrations") for e in graph[m])], "the core imports pipecat"
