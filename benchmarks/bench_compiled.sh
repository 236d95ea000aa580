#!/usr/bin/env bash
# What the compiled core buys: benchmarks/bench_cpu.py on this checkout's compiled core and on
# its Python source (KVSCHED_PURE=1, the same files), in fresh processes, interleaved, ROUNDS
# rounds; compare the best cpu_s of each and check that the digests agree (byte-identical
# results). Needs an install that built the core (`pip install -e .` with Cython and a C
# compiler; `kvsched --version` says which core runs).
#
#   benchmarks/bench_compiled.sh
#   ROUNDS=5 CONFIGS="vllm sarathi" benchmarks/bench_compiled.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
ROUNDS=${ROUNDS:-3}
REPEATS=${REPEATS:-3}
CONFIGS=${CONFIGS-"vllm vllm-noapc sarathi mcsf synthetic:100000"}

"$PY" -c "import kvsched.compiled as c, sys; d = c.describe(); print(d, file=sys.stderr); \
sys.exit(0 if d.startswith('compiled core') else 'bench_compiled.sh: this install does not run the compiled core')"
for config in $CONFIGS; do
  for round in $(seq "$ROUNDS"); do
    echo "round=$round core=compiled $("$PY" benchmarks/bench_cpu.py "$config" "$REPEATS" | tail -1)"
    echo "round=$round core=pure     $(KVSCHED_PURE=1 "$PY" benchmarks/bench_cpu.py "$config" "$REPEATS" | tail -1)"
  done
done
