"""The package as pip builds it: every subpackage and data file in the wheel, and dependencies that match the code.

pyproject.toml finds the packages (so a new subfolder needs no edit there) and declares compatible ranges;
requirements.txt pins the exact set CI tests. These tests build the wheel from a copy of the source tree and compare
the three. `.ci/wheel_check.sh` goes further: it installs the wheel into a fresh environment and runs it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "segdemo"
TRITON_MODEL = "segdemo/triton/python_model.py"  # copied as model.py into Triton repositories at run time
NOT_PACKAGED = (".pyc", ".pyi")  # bytecode, and the type stubs Gradio writes next to its component subclasses
# Modules segdemo imports that no pyproject entry provides, and why.
PROVIDED_ELSEWHERE = {
    "triton_python_backend_utils",  # tritonserver's Python backend gives it to python_model.py, which runs there
}
# Packages that install hints (optional.require/missing) name but pyproject.toml leaves to the user, and why.
INSTALLED_SEPARATELY = {
    # full TensorRT for --backend tensorrt: GPU hosts only, its version matching the host's CUDA (see docs/tensorrt.md)
    "tensorrt-cu13", "tensorrt",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def _declared() -> dict[str, dict[str, Requirement]]:
    """pyproject's requirements by group ("default" and each extra), keyed by canonical name; self-references out."""
    project = _pyproject()["project"]
    groups = {"default": project["dependencies"], **project["optional-dependencies"]}
    return {group: {canonicalize_name(r.name): r for r in map(Requirement, reqs) if r.name != "segdemo"}
            for group, reqs in groups.items()}


def _source_files() -> set[str]:
    """Every file under segdemo/ that belongs in the wheel, as its path inside the wheel."""
    return {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in NOT_PACKAGED}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel pip builds from a copy of the source tree (the checkout itself stays free of build output)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "segdemo")  # with any __pycache__ or stubs lying here: they must stay out
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("segdemo-*.whl")
    with zipfile.ZipFile(built) as zf:
        yield zf


def test_wheel_holds_every_subpackage(wheel):
    names = set(wheel.namelist())
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py")
                      if "__pycache__" not in p.parts)
    assert "segdemo/triton" in packages
    missing = [pkg for pkg in packages if f"{pkg}/__init__.py" not in names]
    assert not missing, f"packages left out of the wheel: {missing}"


def test_wheel_holds_every_source_and_data_file(wheel):
    names = set(wheel.namelist())
    assert TRITON_MODEL in names
    missing = sorted(_source_files() - names)
    assert not missing, f"files under segdemo/ left out of the wheel (a folder without __init__.py?): {missing}"
    stray = sorted(n for n in names if n.startswith("segdemo/") and (n.endswith(NOT_PACKAGED) or "__pycache__" in n))
    assert not stray, f"build leftovers in the wheel: {stray}"


def test_wheel_metadata_declares_dependencies_and_command(wheel):
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [Requirement(line.split(":", 1)[1].strip()) for line in wheel.read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    default = {canonicalize_name(r.name) for r in requires if r.marker is None}
    assert default == set(_declared()["default"]), "the wheel's dependencies are not pyproject's"
    assert {"torch", "onnxruntime", "gradio", "av"} <= default
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "segdemo = segdemo.cli:main" in wheel.read(entry_points).decode()


def test_requirements_pin_what_pyproject_declares():
    """requirements.txt: the exact pins, each inside pyproject's range; the two name the same packages."""
    declared = _declared()
    ranges = {name: req for group, reqs in declared.items() if group not in ("dev", "all")
              for name, req in reqs.items()}
    pins = {canonicalize_name(r.name): r for r in _requirements(ROOT / "requirements.txt")}
    assert set(pins) == set(ranges), (f"only in requirements.txt: {sorted(set(pins) - set(ranges))}; "
                                      f"only in pyproject.toml: {sorted(set(ranges) - set(pins))}")
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==", f"requirements.txt should pin {pin} exactly"
        assert ranges[name].specifier.contains(spec.version, prereleases=True), f"{pin} is outside {ranges[name]}"
        assert pin.extras == ranges[name].extras, f"{pin} and {ranges[name]} name different extras"


def test_space_front_matter_runs_the_pinned_gradio():
    """README.md's front matter configures the Hugging Face Space: its Gradio version is requirements.txt's pin."""
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith("---\n"), "README.md must open with the Space's front matter"
    lines = readme[4:readme.index("\n---\n", 4)].splitlines()  # YAML, here plain `key: value` lines
    matter = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
    (pin,) = [r for r in _requirements(ROOT / "requirements.txt") if canonicalize_name(r.name) == "gradio"]
    (spec,) = pin.specifier
    assert matter["sdk"] == "gradio"
    assert matter["sdk_version"] == spec.version, f"front matter sdk_version {matter['sdk_version']}, {pin}"
    assert (ROOT / matter["app_file"]).is_file()


def test_dev_requirements_match_the_dev_extra():
    dev = _declared()["dev"]
    listed = {canonicalize_name(r.name): r for r in _requirements(ROOT / "requirements-dev.txt")}
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    assert {n: str(r) for n, r in listed.items()} == {n: str(r) for n, r in dev.items()}
    assert "segdemo[all]" in _pyproject()["project"]["optional-dependencies"]["dev"]


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level names imported when the module is imported (not inside functions or `if TYPE_CHECKING:`)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name.split(".")[0] for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                found.add(child.module.split(".")[0])
            visit(child)

    visit(tree)
    return found


def test_default_install_covers_module_level_imports():
    """What a module imports as it loads must come with `pip install segdemo`: optional parts are imported lazily."""
    from importlib.metadata import packages_distributions

    declared = set(_declared()["default"])
    default = {module for module, dists in packages_distributions().items()
               if any(canonicalize_name(d) in declared for d in dists)}
    assert {"torch", "PIL", "gradio", "av", "skimage"} <= default
    wrong = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _module_level_imports(ast.parse(path.read_text())):
            if name not in sys.stdlib_module_names and name != "segdemo" and name not in default | PROVIDED_ELSEWHERE:
                wrong.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    assert not wrong, f"imported at module level but not a default dependency (import it lazily?): {wrong}"


def _install_hints() -> dict[str, str]:
    """Package names segdemo's optional.require/missing calls and TensorRT flavours tell users to install."""
    hints = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            literals = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if func in ("require", "missing") and literals and isinstance(literals[0], str):
                package = literals[1] if len(literals) > 1 and isinstance(literals[1], str) else literals[0]
                hints[Requirement(package.split(".")[0] if package == literals[0] else package).name] = str(path)
            elif func == "Flavour" and len(literals) == 3 and isinstance(literals[2], str):
                hints[literals[2]] = str(path)
    return hints


def test_install_hints_name_declared_packages():
    hints = _install_hints()
    assert {"av", "tritonclient", "tensorrt-rtx-cu13"} <= set(hints), hints  # the parser still finds the calls
    declared = set().union(*(set(reqs) for reqs in _declared().values()))
    unknown = {name: where for name, where in hints.items()
               if canonicalize_name(name) not in declared and name not in INSTALLED_SEPARATELY}
    assert not unknown, f"install hints name packages pyproject.toml does not declare: {unknown}"


def test_tensorrt_requirements_are_pinned_subset_without_torch():
    """requirements-tensorrt.txt (the TensorRT path without PyTorch): requirements.txt's pins, and none of the
    packages that path must not need (tests/test_no_torch.py installs and runs it)."""
    pins = {canonicalize_name(r.name): str(r.specifier) for r in _requirements(ROOT / "requirements.txt")}
    slim = {canonicalize_name(r.name): str(r.specifier) for r in _requirements(ROOT / "requirements-tensorrt.txt")}
    assert {"tensorrt-rtx-cu13", "cuda-python", "numpy", "gradio"} <= set(slim)
    assert not {"torch", "transformers", "onnxruntime"} & set(slim)
    assert {name: pins.get(name) for name in slim} == slim, "requirements-tensorrt.txt differs from requirements.txt"
