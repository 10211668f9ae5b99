#!/usr/bin/env bash
# Installs, builds (warnings are errors) and runs every test: the GoogleTest suites, the MPI runs
# under mpirun, the pytest suites and the CLI checks (ctest), pip install . in a fresh venv and the
# find_package consumer of an install (scripts/check_pip.sh, scripts/check_install.sh), then the
# core suites again under AddressSanitizer + UndefinedBehaviorSanitizer (clang) and the checkpoint
# reader's fuzzer for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
ONEBIT_WERROR=ON scripts/setup.sh
# OpenMPI refuses root unless told; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
LOGS=build/test-logs
mkdir -p "$LOGS"
ctest --test-dir build --output-on-failure --timeout 600 -j2 | tee "$LOGS/main.log"

echo "== pip install . in a fresh venv, import, the example on 2 processes and under torchrun with 4, pip wheel =="
scripts/check_pip.sh
echo "== cmake --install, then a find_package(onebit) consumer built and run from a temporary folder =="
scripts/check_install.sh build

echo "== core tests under AddressSanitizer + UndefinedBehaviorSanitizer =="
CC=clang CXX=clang++ cmake -S . -B build-san -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DONEBIT_SANITIZE=address,undefined -DONEBIT_FUZZ=ON \
  -DONEBIT_WITH_TORCH=OFF -DONEBIT_WITH_CUDA=OFF -DONEBIT_WITH_NCCL=OFF >/dev/null
cmake --build build-san -j"$(nproc)" --target onebit_kernels_test onebit_comm_test onebit_optim_test \
  onebit_checkpoint_test onebit_freeze_test onebit_checkpoint_fuzz onebit_plan_test onebit_proc_test \
  onebit_registry_test onebit_fault_injection_test
ctest --test-dir build-san --output-on-failure --timeout 900 -j2 -L core | tee "$LOGS/sanitized.log"

echo "== checkpoint reader fuzzer, ${ONEBIT_FUZZ_SECONDS:-60} s =="
mkdir -p build-san/fuzz-corpus
build-san/optim/onebit_checkpoint_fuzz -max_total_time="${ONEBIT_FUZZ_SECONDS:-60}" -max_len=4096 \
  build-san/fuzz-corpus 2>&1 | tail -n 3

# One closing line over both ctest runs (set -o pipefail has already stopped on any failure).
total=$(grep -ho 'tests failed out of [0-9]*' "$LOGS/main.log" "$LOGS/sanitized.log" | awk '{s += $5} END {print s}')
skipped=$(cat "$LOGS/main.log" "$LOGS/sanitized.log" | grep -cE '^[[:space:]]+[0-9]+ - .*\(Skipped\)$' || true)
echo "onebit: $((total - skipped)) passed, 0 failed, $skipped skipped"
