"""The optional compiled core (setup.py, kvsched.compiled): the build's source transform, its
fallback to the pure package, and that compiled and pure-Python runs are byte-identical.

The rest of the suite runs on whatever this install built: on the compiled core where the
build succeeded (CI's), on the Python source otherwise. The tests that need extension modules
skip, saying why, on a pure install.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kvsched
import kvsched.compiled

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(kvsched.__file__).resolve().parent
STATE = kvsched.compiled.status()
needs_compiled = pytest.mark.skipif(
    not STATE["compiled_modules"] or STATE["stale"] or STATE["pure_requested"],
    reason=f"this install does not run the compiled core ({kvsched.compiled.describe()}); "
           "`pip install -e .` with Cython and a C compiler builds it")


def _setup_module():
    spec = importlib.util.spec_from_file_location("kvsched_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only as __main__
    return module


def _decorators_of(lines, name):
    at = next(i for i, line in enumerate(lines) if re.match(rf"class {name}\b", line))
    i = at
    while lines[i - 1].startswith("@"):
        i -= 1
    return lines[i:at]


def test_the_compiled_copy_differs_only_in_its_cdef_classes_decorators():
    setup = _setup_module()
    checked = 0
    for module in setup.HOT:
        pxd = ROOT / "src" / "kvsched" / f"{module}.pxd"
        if not pxd.exists():
            continue
        source = (ROOT / "src" / "kvsched" / f"{module}.py").read_text()
        copy = setup.compiled_copy(source, pxd.read_text())
        cdef = set(re.findall(r"^cdef class (\w+)", pxd.read_text(), flags=re.MULTILINE))
        a, b = source.splitlines(), copy.splitlines()
        changed = [line for line in a if line not in b] + [line for line in b if line not in a]
        assert all(line.startswith("@") for line in changed), (module, changed)
        for name in cdef:
            for line in _decorators_of(b, name):
                assert "slots=True" not in line and "fast_frozen_init" not in line, (module, name, line)
        checked += len(cdef)
        if module == "backend":  # its other slotted dataclass is a Python class in the build: kept
            assert copy.count("@dataclass(frozen=True, slots=True)") == source.count(
                "@dataclass(frozen=True, slots=True)") - 1
    assert checked >= 7  # Request, KVCache x2, DecodePool, Decision, View, Scheduler, BatchShape, ...
    with pytest.raises(ValueError, match="cdef class Ghost"):
        setup.compiled_copy("class Real:\n    pass\n", "cdef class Ghost:\n    pass\n")


def _copy_of_the_project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy2(ROOT / name, root / name)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("*.so", "compiled.json", "__pycache__"))
    if (ROOT / "build" / "cython").exists():  # the C files of this checkout's build: Cython need not run again
        shutil.copytree(ROOT / "build" / "cython", root / "build" / "cython")
    return root


def _build_ext(root, tmp_path, **env):
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "temp")],
        check=False, cwd=root, capture_output=True, text=True, env={**os.environ, **env})


def test_a_failed_compile_installs_the_pure_package_and_says_why(tmp_path):
    root = _copy_of_the_project(tmp_path)
    # CC=false: a compiler that fails (without Cython in this venv, the import fails first).
    done = _build_ext(root, tmp_path, CC="false", KVSCHED_BUILD="auto")
    assert done.returncode == 0, done.stderr
    assert "kvsched: compiled core not built (" in done.stderr
    lib = tmp_path / "lib"
    assert not list(lib.rglob("*.so")) and not list(lib.rglob("compiled.json"))
    strict = _build_ext(root, tmp_path, CC="false", KVSCHED_BUILD="compiled")
    assert strict.returncode != 0
    bad = _build_ext(root, tmp_path, KVSCHED_BUILD="fast")
    assert bad.returncode != 0 and "KVSCHED_BUILD='fast': expected auto, compiled or pure" in bad.stderr


def test_a_pure_build_compiles_nothing(tmp_path):
    root = _copy_of_the_project(tmp_path)
    done = _build_ext(root, tmp_path, KVSCHED_BUILD="pure")
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("compiled.json"))
    assert "compiled core" not in done.stderr


@needs_compiled
def test_the_hot_modules_run_compiled():
    import kvsched.loop
    import kvsched.schedulers.vllm

    state = kvsched.compiled.status()
    assert {"kvsched.loop", "kvsched.pool", "kvsched.kvcache", "kvsched.request", "kvsched.decision",
            "kvsched.schedulers.vllm"} <= set(state["in_use"])
    assert sys.modules["kvsched.loop"].__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _side_by_side(**env):
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "side_by_side_runs.py")], capture_output=True,
                          text=True, env={**os.environ, **env}, check=True)
    return json.loads(done.stdout)


@needs_compiled
def test_compiled_and_pure_python_runs_are_byte_identical():
    compiled, pure = _side_by_side(), _side_by_side(KVSCHED_PURE="1")
    assert all(f.endswith(".py") for f in pure["modules"].values()), pure["modules"]
    assert all(not f.endswith(".py") for f in compiled["modules"].values()), compiled["modules"]
    assert compiled["runs"].keys() == pure["runs"].keys()
    for key, value in pure["runs"].items():
        assert compiled["runs"][key] == value, key
    completed = [v for v in pure["runs"].values() if re.fullmatch(r"[0-9a-f]{64}", v)]
    assert len(completed) >= 0.9 * len(pure["runs"])  # runs, not a list of identical errors
    assert pure["num_preemptions"] > 100  # the KV budgets are tight enough to preempt


def _imported_from(package_root, *modules, **env):
    code = "import importlib, json, sys; print(json.dumps([importlib.import_module(m).__file__ for m in sys.argv[1:]]))"
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(package_root), **env})
    return json.loads(done.stdout), done.stderr


@needs_compiled
def test_an_edited_source_is_imported_instead_of_the_stale_extensions(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "kvsched", ignore=shutil.ignore_patterns("__pycache__"))
    files, err = _imported_from(tmp_path, "kvsched.loop", "kvsched.pool")
    assert not any(f.endswith(".py") for f in files) and err == ""
    with open(tmp_path / "kvsched" / "pool.py", "a") as f:
        f.write("\n# edited after the build\n")
    files, err = _imported_from(tmp_path, "kvsched.loop", "kvsched.pool")
    assert all(f.endswith(".py") for f in files)  # all of them: the typed modules go together
    assert "kvsched: using the Python source of the compiled core: kvsched.pool changed since the build" in err


@needs_compiled
def test_extensions_without_a_manifest_are_not_trusted(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "kvsched", ignore=shutil.ignore_patterns("__pycache__"))
    manifest = tmp_path / "kvsched" / "compiled.json"
    for broken in ("{not json", None):  # cut short while written; a build that stopped before it
        if broken is None:
            manifest.unlink()
        else:
            manifest.write_text(broken)
        files, err = _imported_from(tmp_path, "kvsched.loop", "kvsched.schedulers.vllm")
        assert all(f.endswith(".py") for f in files)
        assert "kvsched: extension modules without a readable compiled.json (" in err and "kvsched.schedulers.vllm" in err
