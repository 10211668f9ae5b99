#!/usr/bin/env bash
# Runs the benchmarks that back the README's results table, writes their JSON under
# bench/results/<machine>/, and regenerates the table. Run on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/onebit ] || scripts/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out="bench/results/${ONEBIT_MACHINE:-cpu-$(nproc)core}"
mkdir -p "$out"
build/onebit bench compress --elements 67108864 --threads 1 --json --out "$out/compress.json" >/dev/null
build/onebit bench allreduce --backend mpi --workers 4 --elements 25000000 --json --out "$out/allreduce_mpi_4.json" >/dev/null
for opt in lamb onebit-lamb onebit-adam; do
  build/onebit bench step --optimizer "$opt" --params 100000000 --threads 1 --json --out "$out/step_$opt.json" >/dev/null
done
# --precision bf16 against fp32 in the same run (training samples/s and held-out loss).
/usr/bin/python3 bench/precision.py --onebit build/onebit --out "$out/precision.json"
# LAMB vs 1-bit LAMB (the run directories stay in out/; the results and the picture are kept).
build/onebit compare --out out/compare --no-progress
mkdir -p "$out/compare"
cp out/compare/compare.json out/compare/loss_vs_samples.png "$out/compare/"
# The shaped network (root): Gloo allreduces at 1gbit/100mbit and the planner against them.
if [ "$(id -u)" = 0 ]; then
  /usr/bin/python3 bench/validate_plan.py --onebit build/onebit --out-dir "$out"
fi
/usr/bin/python3 scripts/results_table.py --write README.md
