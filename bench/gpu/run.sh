#!/usr/bin/env bash
# The one GPU script: configures and builds the CUDA kernels, the NCCL backend, their tests and the
# GPU benchmark; runs the tests against the CPU reference; times BERT-Large shapes against the
# device copy floor; writes bench/results/<gpu-name>.json. Meant for the GPU machine (no network,
# NCCL only inside the Python package nvidia.nccl); finishes within about 8 minutes.
#
#   bash bench/gpu/run.sh            # the kernels: build, tests, benchmark
#   SKIP_TESTS=1 bash bench/gpu/run.sh   # build and benchmark only
#   PHASES="torch train" bash bench/gpu/run.sh   # then torch_phase.sh and train_phase.sh (training)
#
# Environment: BUILD (build folder, default build-gpu), CUDA_ARCH (default 90), JOBS, OUT (if set,
# logs and results are copied there too), BENCH_ARGS (extra flags for onebit_gpu_bench).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${BUILD:-$ROOT/build-gpu}"
CUDA_ARCH="${CUDA_ARCH:-90}"
JOBS="${JOBS:-$(nproc)}"
START=$(date +%s)
mkdir -p "$BUILD" "$ROOT/bench/results"
LOG="$BUILD/run.log"
: >"$LOG"
say() { echo "[run.sh +$(($(date +%s) - START))s] $*" | tee -a "$LOG" >&2; }
finish() {
  local rc=$?
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$LOG" "$OUT/" 2>/dev/null || true
    cp "$BUILD"/cuda_tests_*.xml "$OUT/" 2>/dev/null || true
    cp "$ROOT"/bench/results/*.json "$OUT/" 2>/dev/null || true
  fi
  say "done, exit status $rc"
}
trap finish EXIT

# --- CUDA compiler and NCCL (bench/gpu/toolchain.sh) ---------------------------------------------
source "$ROOT/bench/gpu/toolchain.sh"
find_gpu_toolchain "$BUILD/nccl" || exit 1

# --- configure and build --------------------------------------------------------------------------
PREFIX=()
[ -d "$ROOT/build-deps" ] && PREFIX=(-DCMAKE_PREFIX_PATH="$ROOT/build-deps") && say "using build-deps/ (bench/gpu/pack_deps.sh)"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
say "configure"
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  "${CUDA_CMAKE_FLAGS[@]}" \
  -DONEBIT_WITH_MPI=OFF -DONEBIT_WITH_TORCH=OFF -DONEBIT_BUILD_TESTS=ON "${PREFIX[@]}" \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 >>"$LOG" 2>&1 ||
  { tail -40 "$LOG"; say "configure failed; if nlohmann-json, CLI11 or GoogleTest is missing here, run" \
      "bench/gpu/pack_deps.sh where they are installed and bring build-deps/ along"; exit 1; }
grep -E "^-- +(CUDA|NCCL|  *nvcc|  *library)" "$LOG" | tee /dev/stderr >/dev/null || true
say "build ($JOBS jobs)"
# onebit_cuda_tests builds every CUDA test executable: kernels/cuda's, comm/cuda's and optim/cuda's.
cmake --build "$BUILD" -j "$JOBS" --target onebit_cuda_tests onebit_gpu_bench >>"$LOG" 2>&1 || { tail -60 "$LOG"; exit 1; }

# --- tests: every CUDA kernel (kernels/cuda), the 16-bit exchange (comm/cuda), the allreduce and the optimizers (optim/cuda) against
# the CPU ------------------------------------------------------------------------------------------
if [ -z "${SKIP_TESTS:-}" ]; then
  say "tests"
  TESTS_RC=0
  set +e
  for t in "$BUILD/kernels/cuda/onebit_cuda_kernels_test" "$BUILD/comm/cuda/onebit_cuda_comm_test" \
    "$BUILD/optim/cuda/onebit_cuda_optim_test"; do
    timeout 100 "$t" --gtest_output="xml:$BUILD/cuda_tests_$(basename "$t").xml" 2>&1 | tee -a "$LOG" | grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED|==========) |Failure|Expected|Which is|differ"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || TESTS_RC=$rc
  done
  set -e
  say "tests exit status $TESTS_RC"
fi

# --- benchmark -----------------------------------------------------------------------------------
say "benchmark"
(cd "$ROOT" && timeout 200 "$BUILD/bench/gpu/onebit_gpu_bench" --out auto ${BENCH_ARGS:-}) 2> >(tee -a "$LOG" >&2) | tee "$BUILD/bench.json" >/dev/null
python3 - "$BUILD/bench.json" <<'PY' | tee -a "$LOG"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['device']}: {r['params']:,} params in {r['layers']} tensors, backend {r['backend']}, "
      f"copy {r['copy']['GBps']:.0f} GB/s ({r['copy']['ms_median']:.2f} ms for 8 B/param)")
for name, t in list(r["results"].items()) + [("kernel " + k, v) for k, v in r["kernels"].items()]:
    bar = f"  bar {t['bar_fraction_of_copy']} of copy: {'met' if t['meets_bar'] else 'NOT met'}" if "meets_bar" in t else ""
    print(f"  {name:40s} {t['ms_median']:8.3f} ms  {t['bytes_per_param']:6.3f} B/param  "
          f"{t['GBps']:7.0f} GB/s  {t['fraction_of_copy']:.2f} of copy{bar}")
if "cpu_check" in r:
    print("  bitwise equal to the CPU at full size:", r["cpu_check"])
PY
# --- the phases against the machine's torch, as asked: PHASES="torch train" -----------------------
for phase in ${PHASES:-}; do
  say "phase $phase"
  OUT="${OUT:-}" bash "$ROOT/bench/gpu/${phase}_phase.sh" || say "phase $phase: exit status $?"
done
[ "${TESTS_RC:-0}" -eq 0 ] || { say "the CUDA tests FAILED (see above)"; exit 1; }
