#!/usr/bin/env bash
# What compiling the UNCHANGED hot modules with Cython (pure-Python mode) buys: builds a copy of
# this tree's src/ with the hot modules compiled in place (a .so next to each .py, which Python
# imports first) and runs benchmarks/bench_cpu.py on it and on the pure-Python src/, in fresh
# processes, interleaved, ROUNDS rounds; compare the best cpu_s per tree and check that the
# digests agree (byte-identical results). Not used by tests or CI; needs a C compiler and
# Cython (any venv: CYTHONIZE=/path/to/cythonize), nothing is added to pyproject.toml.
#
#   benchmarks/bench_compiled.sh                       # build /tmp/compiled_tree, measure
#   ROUNDS=3 CONFIGS="vllm sarathi" benchmarks/bench_compiled.sh
#
# ANNOTATION_TYPING=False (the default) compiles the modules as Python code: annotations are not
# used as C types. With True, Cython enforces `x: list[float]` etc. at run time, and loop.py's
# `cum: list[float]` (later bound to a numpy array) raises TypeError; the other modules run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
CYTHONIZE=${CYTHONIZE:-cythonize}
TREE=${TREE:-/tmp/compiled_tree}
ROUNDS=${ROUNDS:-3}
REPEATS=${REPEATS:-3}
CONFIGS=${CONFIGS:-"vllm vllm-noapc sarathi synthetic:100000"}
ANNOTATION_TYPING=${ANNOTATION_TYPING:-False}
MODULES="loop.py pool.py kvcache.py decision.py fastinit.py schedulers/vllm.py schedulers/vidur.py
sim/backend.py sim/cost.py request.py request_table.py"

if [ ! -d "$TREE/src" ]; then
  mkdir -p "$TREE"
  git archive HEAD src | tar -x -C "$TREE"
  for m in $MODULES; do
    (cd "$TREE/src/kvsched" && "$CYTHONIZE" -i -3 -q -X annotation_typing="$ANNOTATION_TYPING" "$m" >/dev/null) \
      || echo "FAILED to compile $m" >&2
  done
fi
for m in $MODULES; do
  PYTHONPATH="$TREE/src" "$PY" -c "import importlib, sys; m = importlib.import_module('kvsched.' + sys.argv[1]); \
assert m.__file__.endswith('.so'), m.__file__" "$(echo "${m%.py}" | tr / .)" || echo "NOT COMPILED: $m" >&2
done

for config in $CONFIGS; do
  for round in $(seq "$ROUNDS"); do
    for tree in "$PWD/src" "$TREE/src"; do
      echo "round=$round tree=$tree $(PYTHONPATH="$tree" "$PY" benchmarks/bench_cpu.py "$config" "$REPEATS" | tail -1)"
    done
  done
done
