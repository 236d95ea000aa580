"""Build hook: the simulator's optional compiled core (pyproject.toml holds everything else).

`pip install` compiles the hot modules listed in HOT with Cython where it can, each into an
extension module beside its .py (Python imports the extension first). Each is compiled from its
own .py, with the C types that the augmenting .pxd beside it declares: the .py stays the meaning
and the only source, the .pxd says how to compile it (docs/architecture.md, "Compiled core").

The compiled copy of a module differs from its .py in one place: a class that its .pxd declares
`cdef class` loses `slots=True` from its `@dataclass(...)` and its `@fast_frozen_init`. Cython
writes a cdef class's fields and `__init__` in C, and rejects both; they only speed up the
pure-Python path, which keeps them.

KVSCHED_BUILD picks what happens: `auto` (the default) compiles and falls back to the pure
package, saying why on stderr, when Cython or a C compiler fails; `compiled` makes that failure
an error; `pure` builds nothing. The build records the sha256 of each compiled module's .py in
kvsched/compiled.json: kvsched.compiled uses the extensions only while every source matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
GEN = HERE / "build" / "cython"  # the compiled copies and their C files
HOT = (
    "request", "kvcache", "pool", "decision", "fastinit", "backend", "loop", "request_table",
    "schedulers/vllm", "schedulers/vidur", "schedulers/queues", "sim/backend", "sim/cost",
)
MANIFEST = "compiled.json"


def compiled_copy(source: str, pxd: str) -> str:
    """`source` as Cython compiles it: the cdef classes of `pxd` without slots=True or @fast_frozen_init."""
    lines = source.splitlines(keepends=True)
    for name in re.findall(r"^cdef class (\w+)", pxd, flags=re.MULTILINE):
        at = next((i for i, line in enumerate(lines) if re.match(rf"class {name}\b", line)), None)
        if at is None:
            raise ValueError(f"cdef class {name} of the .pxd has no class in the .py")
        i = at - 1
        while i >= 0 and lines[i].startswith("@"):
            if lines[i].startswith("@fast_frozen_init"):
                del lines[i]
            else:
                line = re.sub(r"\bslots=True,\s*|,\s*slots=True\b|\bslots=True\b", "", lines[i])
                lines[i] = line.replace("@dataclass()", "@dataclass")
            i -= 1
    return "".join(lines)


def _mode() -> str:
    mode = os.environ.get("KVSCHED_BUILD", "auto")
    if mode not in ("auto", "compiled", "pure"):
        raise SystemExit(f"KVSCHED_BUILD={mode!r}: expected auto, compiled or pure")
    return mode


class BuildExt(build_ext):
    """Cythonize the compiled copies, build them in parallel, write the manifest; or fall back."""

    def run(self) -> None:
        if _mode() == "pure":
            self._remove_outputs()  # an earlier in-place build's extensions would shadow the sources
            return
        try:
            for ext, generated in zip(self.extensions, self._cythonize()):
                ext.sources = generated.sources  # the C files; keeps setuptools' own Extension objects
            self.parallel = self.parallel or os.cpu_count() or 1
            super().run()
        except Exception as exc:  # no Cython, no compiler, a compile error: all one case here
            if _mode() == "compiled":
                raise
            self._remove_outputs()
            print(f"kvsched: compiled core not built ({type(exc).__name__}: {exc}); "
                  "installing the pure-Python package", file=sys.stderr)
            return
        self._write_manifest()

    def _remove_outputs(self) -> None:
        for ext in self.extensions:  # where this run puts them: in place too
            Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
        Path(self.get_ext_fullpath("kvsched.request")).with_name(MANIFEST).unlink(missing_ok=True)

    def _cythonize(self) -> list[Extension]:
        from Cython.Build import cythonize

        for module in HOT:
            py, pxd = SRC / "kvsched" / f"{module}.py", SRC / "kvsched" / f"{module}.pxd"
            text = py.read_text()
            out = GEN / "kvsched" / f"{module}.py"
            out.parent.mkdir(parents=True, exist_ok=True)
            if pxd.exists():
                text = compiled_copy(text, pxd.read_text())
                _write_if_changed(out.with_suffix(".pxd"), pxd.read_text())
            _write_if_changed(out, text)
        for package in {Path(m).parent for m in HOT} | {Path(".")}:
            _write_if_changed(GEN / "kvsched" / package / "__init__.pxd", "")  # marks the packages for Cython
        extensions = [Extension(e.name, [str(GEN / "kvsched" / f"{m}.py")]) for e, m in zip(self.extensions, HOT)]
        return cythonize(extensions, include_path=[str(GEN)], quiet=True, compiler_directives={
            "language_level": 3, "annotation_typing": False})

    def _write_manifest(self) -> None:
        sources = {f"kvsched.{m.replace('/', '.')}": hashlib.sha256((SRC / "kvsched" / f"{m}.py").read_bytes()).hexdigest()
                   for m in HOT}
        package_dir = Path(self.get_ext_fullpath("kvsched.request")).parent
        (package_dir / MANIFEST).write_text(json.dumps({"sources_sha256": sources}, indent=1) + "\n")


def _write_if_changed(path: Path, text: str) -> None:
    """Keep the copy's mtime when nothing changed, so Cython does not regenerate its C file."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import compiled_copy
    setup(
        ext_modules=[Extension(f"kvsched.{m.replace('/', '.')}", [f"src/kvsched/{m}.py"]) for m in HOT],
        cmdclass={"build_ext": BuildExt},
    )
