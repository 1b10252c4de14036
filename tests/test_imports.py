"""The pack's import graph: one way (nodes -> core; tools -> run time, never back), in layers, with
no cycles, late imports included; and every module imports on its own."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HOST, ROOT

PACKAGES = ("flashface_core", "nodes")
COMMANDS = {"flashface_core.run", "flashface_core.download", "flashface_core.convert", "flashface_core.verify_golden"}
# What a module may import: modules of lower layers, and modules of its own subpackage (acyclic).
LAYERS = {
    "flashface_core.contract": 0,
    "flashface_core.model_files": 1,
    "flashface_core.model": 2,
    "flashface_core.speed": 3,
    "flashface_core.faces": 3,
    "flashface_core.people": 3,  # several people: who they are, their regions
    "flashface_core.injection": 4,
    "flashface_core.identities": 4,  # saved identities: names, the file format, save and load
    "flashface_core.guidance": 5,
    "flashface_core.loader": 6,
    "flashface_core.detail": 6,  # the face detail pass: crop, match to people, stitch
    "flashface_core.tools": 7,
    "flashface_core": 8,  # the package docstring and the commands
    "nodes": 9,
    "": 10,  # the pack's __init__, which ComfyUI loads
}
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview", "nodes",
                "execution", "utils", "server", "node_helpers"}


def module_files() -> dict[str, Path]:
    files = {"": ROOT / "__init__.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement, in functions too, except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> the pack modules it imports (a ``from package import name`` of a module counts as that module)."""
    files = module_files()
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(filter(None, [*base_parts, node.module or ""]))
                targets = [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
                edges |= {t if t in files else base for t in targets}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flashface_core"):
                edges.add(node.module)
            elif isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name.startswith("flashface_core")}
        graph[name] = {edge for edge in edges if edge in files and edge != name}
    return graph


def layer_of(module: str) -> tuple[str, int]:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + ".") or prefix == "":
            return prefix, LAYERS[prefix]
    raise AssertionError(module)


def test_the_walker_sees_relative_late_and_aliased_imports():
    graph = import_graph()
    assert "flashface_core.model.checkpoint" in graph["flashface_core.model.flashface_model"]
    assert "flashface_core.model_files.folders" in graph["flashface_core.faces.retinaface"]  # a late import
    assert "flashface_core.injection.apply" in graph["nodes.apply_flashface"]
    assert "flashface_core.model.references" not in graph["flashface_core.contract"]  # TYPE_CHECKING only


def test_no_import_cycles():
    graph = import_graph()
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_imports_run_one_way_through_the_layers():
    wrong = []
    for module, targets in import_graph().items():
        home, rank = layer_of(module)
        for target in targets:
            target_home, target_rank = layer_of(target)
            if target_home != home and target_rank >= rank:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "upward imports: " + ", ".join(sorted(wrong))


def test_nothing_at_run_time_imports_the_tools_or_the_commands():
    wrong = []
    for module, targets in import_graph().items():
        if module.startswith("flashface_core.tools") or module in COMMANDS:
            continue
        wrong += [f"{module} -> {t}" for t in targets if t.startswith("flashface_core.tools") or t in COMMANDS]
    assert not wrong, ", ".join(sorted(wrong))


def _import_each(with_host: bool) -> dict:
    """In a fresh interpreter, import every pack module on its own (the pack's modules forgotten between two)."""
    script = f"""
import importlib, importlib.util, json, sys
sys.path[:0] = {[str(HOST)] if with_host else []!r}
if {with_host!r}:
    import comfy.cli_args, torch
    comfy.cli_args.args.cpu = not torch.cuda.is_available()
spec = importlib.util.spec_from_file_location("pack", {str(ROOT / "__init__.py")!r}, submodule_search_locations=[{str(ROOT)!r}])
results = {{}}
for name in {sorted(m for m in module_files() if m)!r}:
    for key in [k for k in sys.modules if k == "pack" or k.startswith("pack.")]:
        del sys.modules[key]
    sys.modules["pack"] = importlib.util.module_from_spec(spec)
    try:
        importlib.import_module("pack." + name)
        results[name] = None
    except ModuleNotFoundError as error:
        results[name] = ["missing", error.name]
    except Exception as error:
        results[name] = ["error", f"{{type(error).__name__}}: {{error}}"]
print(json.dumps(results))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_imports_on_its_own_without_comfyui_or_needs_only_comfyui():
    failures = {name: result for name, result in _import_each(with_host=False).items()
                if result is not None and not (result[0] == "missing" and result[1].split(".")[0] in HOST_MODULES)}
    assert not failures, failures


@pytest.mark.host
def test_every_module_imports_on_its_own_with_comfyui():
    failures = {name: result for name, result in _import_each(with_host=True).items() if result is not None}
    assert not failures, failures


def test_the_core_package_and_its_commands_import_nothing_from_comfyui():
    script = ("import sys; import flashface_core, flashface_core.run, flashface_core.download, flashface_core.convert, "
              "flashface_core.verify_golden; print(sorted(m for m in sys.modules if m.split('.')[0] in "
              f"{sorted(HOST_MODULES)!r} or m == 'torch'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
