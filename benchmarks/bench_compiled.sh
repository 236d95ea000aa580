#!/usr/bin/env bash
# What compiling the hot modules with Cython (pure-Python mode) buys: builds a copy of this
# tree's src/ with the hot modules compiled in place (a .so next to each .py, which Python
# imports first) and runs benchmarks/bench_cpu.py on it and on the pure-Python src/, in fresh
# processes, interleaved, ROUNDS rounds; compare the best cpu_s per tree and check that the
# digests agree (byte-identical results). Not used by tests or CI; needs a C compiler and
# Cython (any venv: CYTHONIZE=/path/to/cythonize), nothing is added to pyproject.toml.
#
#   benchmarks/bench_compiled.sh                       # build /tmp/compiled_tree, measure
#   ROUNDS=3 CONFIGS="vllm sarathi" benchmarks/bench_compiled.sh
#   TYPED=1 benchmarks/bench_compiled.sh               # also a typed build: pure, untyped, typed
#
# ANNOTATION_TYPING=False (the default) compiles the modules as Python code: annotations are not
# used as C types. With True, Cython enforces `x: list[float]` etc. at run time, and loop.py's
# `cum: list[float]` (later bound to a numpy array) raises TypeError; the other modules run.
#
# TYPED=1 builds a third tree, TYPED_TREE, the same way but with the "augmenting" .pxd files of
# benchmarks/compiled_pxd/ copied next to their .py first (same paths under src/): they turn the
# plain classes named there into cdef classes with C-typed attributes and declare the hot
# methods cpdef with C-typed locals. The .py files are unchanged and stay the meaning; a .pxd
# only changes how Cython compiles them. TYPED_MODULES (default: every module with a .pxd)
# picks which .pxd files are used, to time one group at a time; the others compile untyped.
# One source change is unavoidable: Cython compiles the @dataclass of a cdef class with its own
# dataclass, which rejects `slots=True`, so the typed tree's copy of each UNSLOT module (when its
# .pxd is used) loses that argument (a cdef class has no __dict__ either way).
#
# EDITS=1 builds a fourth tree, EDITS_TREE: the typed one plus benchmarks/compiled_pxd_edits/, the
# source edits a typed build of the rest needs (source_edits.patch, applied to the copy: View,
# Decision and BatchShape without fast_frozen_init and slots, VLLMScheduler registered after its
# class, _apply's generator expression as a loop) and the .pxd files that use them (they replace
# compiled_pxd's). It measures what those edits would buy; the repository's sources stay as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
CYTHONIZE=${CYTHONIZE:-cythonize}
TREE=${TREE:-/tmp/compiled_tree}
TYPED=${TYPED:-0}
TYPED_TREE=${TYPED_TREE:-/tmp/compiled_tree_typed}
EDITS=${EDITS:-0}
EDITS_TREE=${EDITS_TREE:-/tmp/compiled_tree_edits}
PXD_DIR=benchmarks/compiled_pxd
ROUNDS=${ROUNDS:-3}
REPEATS=${REPEATS:-3}
CONFIGS=${CONFIGS-"vllm vllm-noapc sarathi synthetic:100000"}  # CONFIGS= (empty): build only
ANNOTATION_TYPING=${ANNOTATION_TYPING:-False}
MODULES=${MODULES:-"loop.py pool.py kvcache.py decision.py fastinit.py schedulers/vllm.py schedulers/vidur.py
sim/backend.py sim/cost.py request.py request_table.py"}
UNSLOT=${UNSLOT-"request.py kvcache.py"}
TYPED_MODULES=${TYPED_MODULES:-$(cd "$PXD_DIR/kvsched" 2>/dev/null && find . -name '*.pxd' | sed 's|^\./||; s|\.pxd$|.py|' | sort)}

build() {  # build TREE_DIR MODE (0 untyped, 1 typed, 2 typed + edits): src/ at HEAD, MODULES compiled in place
  local tree=$1 mode=$2 m modules=$MODULES
  [ -d "$tree/src" ] && return
  mkdir -p "$tree"
  git archive HEAD src | tar -x -C "$tree"
  if [ "$mode" != 0 ]; then
    for m in $TYPED_MODULES; do
      cp "$PXD_DIR/kvsched/${m%.py}.pxd" "$tree/src/kvsched/${m%.py}.pxd"
      case " $(echo $UNSLOT) " in *" $m "*)
        sed -i -E 's/@dataclass\(slots=True, /@dataclass(/; s/@dataclass\(slots=True\)/@dataclass/' "$tree/src/kvsched/$m";;
      esac
    done
  fi
  if [ "$mode" = 2 ]; then
    patch -s -p1 -d "$tree" < benchmarks/compiled_pxd_edits/source_edits.patch
    (cd benchmarks/compiled_pxd_edits && find kvsched -name '*.pxd' -exec cp {} "$tree/src/{}" \;)
    modules="$modules backend.py"
  fi
  for m in $modules; do
    # From src/, so that a .pxd can cimport another module's (`from kvsched.pool cimport ...`).
    (cd "$tree/src" && "$CYTHONIZE" -i -3 -q -X annotation_typing="$ANNOTATION_TYPING" "kvsched/$m" >/dev/null) \
      || echo "FAILED to compile $m ($tree)" >&2
  done
  for m in $modules; do
    PYTHONPATH="$tree/src" "$PY" -c "import importlib, sys; m = importlib.import_module('kvsched.' + sys.argv[1]); \
assert m.__file__.endswith('.so'), m.__file__" "$(echo "${m%.py}" | tr / .)" || echo "NOT COMPILED: $m ($tree)" >&2
  done
}

trees="$PWD/src $TREE/src"
build "$TREE" 0
if [ "$TYPED" = 1 ]; then
  build "$TYPED_TREE" 1
  trees="$trees $TYPED_TREE/src"
fi
if [ "$EDITS" = 1 ]; then
  build "$EDITS_TREE" 2
  trees="$trees $EDITS_TREE/src"
fi
for config in $CONFIGS; do
  for round in $(seq "$ROUNDS"); do
    for tree in $trees; do
      echo "round=$round tree=$tree $(PYTHONPATH="$tree" "$PY" benchmarks/bench_cpu.py "$config" "$REPEATS" | tail -1)"
    done
  done
done
