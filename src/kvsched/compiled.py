"""Whether the simulator's hot modules run compiled, and the switch back to their Python source.

`pip install` compiles the hot modules with Cython where it can (setup.py): each gets an
extension module beside its .py, which Python imports first, and the build writes
kvsched/compiled.json with the sha256 of every compiled module's source. The typed modules
cimport each other's classes, so they are used all together or not at all: kvsched imports
every one of them from its .py when KVSCHED_PURE=1 is set (to profile, debug, or compare),
or when a source no longer matches the build (an editable install edited since), which it
says once on stderr. Nothing here runs when no extension was built.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

MANIFEST = "compiled.json"
_PACKAGE_DIR = Path(__file__).resolve().parent


def _manifest(package_dir: Path) -> dict[str, str]:
    """Module name -> sha256 of the .py it was compiled from; empty for a pure install."""
    try:
        return dict(json.loads((package_dir / MANIFEST).read_text())["sources_sha256"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or unreadable: its extensions are not trusted
        return {}


def _source(package_dir: Path, module: str) -> Path:
    return package_dir.joinpath(*module.split(".")[1:]).with_suffix(".py")


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:  # a source removed since the build: stale
        return None


def status(package_dir: Path = _PACKAGE_DIR) -> dict:
    """What this install has and what this process uses: the compiled module names, the stale
    ones (source edited since the build), and whether the extensions are in use."""
    sources = _manifest(package_dir)
    stale = sorted(m for m, digest in sources.items() if _sha256(_source(package_dir, m)) != digest)
    in_use = [m for m in sources if m in sys.modules and
              isinstance(getattr(sys.modules[m], "__loader__", None), importlib.machinery.ExtensionFileLoader)]
    return {"compiled_modules": sorted(sources), "stale": stale, "pure_requested": os.environ.get("KVSCHED_PURE") == "1",
            "in_use": sorted(in_use)}


def describe(package_dir: Path = _PACKAGE_DIR) -> str:
    """One line for `kvsched --version`: which core this process imports."""
    state = status(package_dir)
    if not state["compiled_modules"]:
        return "pure Python"
    if state["pure_requested"]:
        return "pure Python: KVSCHED_PURE=1"
    if state["stale"]:
        return "pure Python: the compiled core is stale"
    return f"compiled core: {len(state['compiled_modules'])} modules"


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds each compiled module's .py ahead of its extension module."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self._sources = sources

    def find_spec(self, name, path=None, target=None):
        source = self._sources.get(name)
        return None if source is None else importlib.util.spec_from_file_location(name, source)


def _unrecorded_extensions(package_dir: Path) -> dict[str, str]:
    """Extension modules with no manifest (a build that stopped half-way, a copy made by
    hand): module name -> the same placeholder, so that select() treats them as stale."""
    found = {}
    for path in package_dir.rglob("*.so"):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if path.name.endswith(suffix):
                parts = path.relative_to(package_dir).parts
                found[".".join((package_dir.name, *parts[:-1], path.name[:-len(suffix)]))] = "unrecorded"
                break
    return found


def select(package_dir: Path = _PACKAGE_DIR) -> None:
    """Called once by kvsched/__init__.py before any hot module is imported."""
    sources = _manifest(package_dir)
    if not sources:
        unrecorded = _unrecorded_extensions(package_dir)
        if unrecorded:
            print(f"kvsched: extension modules without a readable {MANIFEST} ({', '.join(sorted(unrecorded))}): using "
                  "their Python source (rebuild: pip install -e .)", file=sys.stderr)
            sys.meta_path.insert(0, _SourceFinder({m: _source(package_dir, m) for m in unrecorded}))
        return
    reason = "KVSCHED_PURE=1" if os.environ.get("KVSCHED_PURE") == "1" else None
    if reason is None:
        stale = status(package_dir)["stale"]
        if not stale:
            return
        reason = f"{', '.join(stale)} changed since the build (rebuild: pip install -e .)"
        print(f"kvsched: using the Python source of the compiled core: {reason}", file=sys.stderr)
    sys.meta_path.insert(0, _SourceFinder({m: _source(package_dir, m) for m in sources}))
