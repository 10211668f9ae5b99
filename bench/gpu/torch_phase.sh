#!/usr/bin/env bash
# The torch phase of the GPU run: builds onebit against this machine's own torch (the pip wheel, with
# CUDA) in a build folder of its own, and runs the torch optimizers' tests: on CPU parameters, and on
# CUDA parameters over the NCCL Communicator and over c10d's ProcessGroupNCCL (C++ and Python), each
# bitwise against the same optimizer on CPU parameters. A failed step is reported and the next one
# still runs where it can; the script always exits 0 (its caller goes on) and ends with a summary.
# About 2.5 minutes on 16 cores (BUDGET_S bounds the whole phase).
#
#   bash bench/gpu/torch_phase.sh
#
# Environment: BUILD_TORCH (build folder, default build-gpu-torch), CUDA_ARCH (default 90), JOBS,
# PYTHON (the interpreter whose torch is built against, default python3), BUDGET_S (default 300),
# OUT (if set, the log, the summary and the test reports are copied there too).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${BUILD_TORCH:-$ROOT/build-gpu-torch}"
BUDGET_S="${BUDGET_S:-300}"
START=$(date +%s)
PHASE=torch_phase
source "$ROOT/bench/gpu/phase_lib.sh"

# --- toolchain: nvcc, NCCL, the torch to build against (phase_lib.sh) ------------------------------
find_gpu_torch || exit 0

# --- configure: the torch targets only (train/ needs SentencePiece, which this machine may lack) -----
if ! configure_against_torch -DONEBIT_BUILD_TRAIN=OFF -DONEBIT_BUILD_TESTS=ON; then
  record "build, tests" "NOT RUN: configure failed (nlohmann-json, CLI11, GoogleTest missing? run bench/gpu/pack_deps.sh where they are and carry build-deps/)"
  exit 0
fi

# --- build: the torch library, its tests, the Python module; the ProcessGroupNCCL test on its own --
BIN="$BUILD/torch"
built=0
step "build torch tests + python module" 150 cmake --build "$BUILD" -j "$JOBS" \
  --target onebit_torch_test onebit_torch_cuda_test onebit_python && built=1
group_test=0
if grep -qs onebit_torch_nccl_group_test "$BUILD/build.ninja" "$BUILD/Makefile"; then
  step "build ProcessGroupNCCL test" 90 cmake --build "$BUILD" -j "$JOBS" --target onebit_torch_nccl_group_test &&
    group_test=1
else
  record "build ProcessGroupNCCL test" "NOT BUILT: this libtorch has no CUDA or onebit no NCCL (see configure)"
fi

# --- tests ---------------------------------------------------------------------------------------
[ "$built" -eq 1 ] || record "tests" "NOT RUN: the build failed"
gtest() {  # gtest NAME EXECUTABLE
  step "$1" 90 "$BIN/$2" --gtest_output="xml:$BUILD/reports/$2.xml"
}
if [ "$built" -eq 1 ]; then
  gtest "C++ torch optimizers, CPU" onebit_torch_test
  gtest "C++ CUDA params: NCCL comm, host comm" onebit_torch_cuda_test
fi
[ "$group_test" -eq 1 ] && gtest "C++ CUDA params: c10d ProcessGroupNCCL" onebit_torch_nccl_group_test

if [ "$built" -eq 1 ]; then
  export PYTHONPATH="$BUILD/python:$ROOT/python/tests"
  cd "$BUILD/reports"  # outside the source and build trees, whose torch/ folders shadow the torch package
  if "$PYTHON" -c 'import pytest' 2>/dev/null; then
    step "Python optimizers, CPU" 90 "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
      --junitxml="$BUILD/reports/test_single_process.xml" "$ROOT/python/tests/test_single_process.py"
    step "Python lost rank named, Gloo" 90 "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
      --junitxml="$BUILD/reports/test_killed_rank.xml" "$ROOT/python/tests/test_distributed.py" -k killed_rank
    step "Python CUDA params: NCCL comm, c10d NCCL" 90 "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
      --junitxml="$BUILD/reports/test_cuda.xml" "$ROOT/python/tests/test_cuda.py"
  else
    # No pytest here: every test_* function of test_cuda.py in turn (tmp_path as a fresh folder).
    step "Python CUDA params (no pytest)" 90 "$PYTHON" -c '
import inspect, tempfile, pathlib, traceback, test_cuda
failed = 0
for name, f in sorted(vars(test_cuda).items()):
    if not name.startswith("test_") or not callable(f):
        continue
    args = {"tmp_path": pathlib.Path(tempfile.mkdtemp())} if "tmp_path" in inspect.signature(f).parameters else {}
    try:
        f(**args)
        print("PASSED", name)
    except Exception:
        failed += 1
        print("FAILED", name)
        traceback.print_exc()
raise SystemExit(1 if failed else 0)'
  fi
fi
exit 0
