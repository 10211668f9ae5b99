# Sourced by the GPU phases (torch_phase.sh, train_phase.sh): steps under a time budget, each
# recorded as one line of a summary that is printed (and copied to OUT) when the phase exits.
#
# The caller sets ROOT, BUILD, PHASE (the phase's name, for the log and the summary), BUDGET_S and
# START (date +%s); TORCH_VERSION and GPU_NAME, once known, name the machine in the summary.
# JOBS (default: the cores) and PYTHON (default python3, the interpreter whose torch is used).
JOBS="${JOBS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$BUILD/reports"
LOG="$BUILD/$PHASE.log"
SUMMARY="$BUILD/$PHASE.summary"
: >"$LOG"
say() { echo "[$PHASE +$(($(date +%s) - START))s] $*" | tee -a "$LOG" >&2; }

RESULTS=()
OK=0
STEPS=0
record() {  # record NAME OUTCOME: one line of the summary
  RESULTS+=("$(printf '  %-42s %s' "$1" "$2")")
  STEPS=$((STEPS + 1))
  say "$1: $2"
}

# step NAME CAP CMD...: runs CMD with its output in reports/NAME.log (and the log), under a timeout of
# CAP seconds or what is left of the budget; records ok / FAILED / TIMED OUT with its counts.
step() {
  local name="$1" cap="$2" left limit t0 rc out counts
  shift 2
  left=$((START + BUDGET_S - $(date +%s)))
  if [ "$left" -lt 10 ]; then
    record "$name" "NOT RUN: the ${BUDGET_S} s budget is spent"
    return 1
  fi
  limit=$((cap < left ? cap : left))
  out="$BUILD/reports/${name// /_}.log"
  t0=$(date +%s)
  say "$name (at most ${limit} s)"
  timeout "$limit" "$@" >"$out" 2>&1
  rc=$?
  cat "$out" >>"$LOG"
  # gtest's and pytest's own counts, when the step ran tests.
  counts="$(grep -hoE '^\[ +(PASSED|SKIPPED|FAILED) +\] [0-9]+ tests?' "$out" | sed -E 's/^\[ +([A-Z]+) +\] ([0-9]+) tests?/\2 \L\1/' | paste -sd, -)"
  [ -z "$counts" ] && counts="$(grep -hoE '[0-9]+ (passed|failed|skipped|errors?)' "$out" | paste -sd, -)"
  counts="${counts:+, ${counts//,/, }}"
  if [ "$rc" -eq 0 ]; then
    OK=$((OK + 1))
    record "$name" "ok ($(($(date +%s) - t0)) s${counts})"
  elif [ "$rc" -eq 124 ]; then
    record "$name" "TIMED OUT after ${limit} s${counts} (see $out)"
  else
    record "$name" "FAILED, exit status ${rc}${counts} (see $out)"
    local line
    while IFS= read -r line; do
      RESULTS+=("      $line")
    done < <(grep -hE '^\[  FAILED  \] [A-Za-z]|^FAILED |error:|Error:|CMake Error' "$out" | head -8)
  fi
  return "$rc"
}

finish() {
  {
    echo "${PHASE//_/ } summary (${TORCH_VERSION:-torch ?}, ${GPU_NAME:-no GPU found}; log $LOG):"
    printf '%s\n' "${RESULTS[@]}"
    echo "${PHASE//_/ }: $OK of $STEPS steps ok in $(($(date +%s) - START)) s"
  } | tee "$SUMMARY"
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$LOG" "$SUMMARY" "$OUT/" 2>/dev/null || true
    cp "$BUILD"/reports/*.xml "$OUT/" 2>/dev/null || true
  fi
}
trap finish EXIT

# find_gpu_torch: nvcc and NCCL (toolchain.sh), the GPU's name, and the torch of $PYTHON to build
# against. Sets PREFIX (torch's CMake prefix, and build-deps/ from bench/gpu/pack_deps.sh when it is
# there) and GEN; returns 1, recorded, when something is missing.
find_gpu_torch() {
  source "$ROOT/bench/gpu/toolchain.sh"
  if ! find_gpu_toolchain "$BUILD/nccl"; then
    record "toolchain" "FAILED: no nvcc"
    return 1
  fi
  GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  local torch_prefix
  torch_prefix="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>>"$LOG")"
  TORCH_VERSION="torch $("$PYTHON" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())' 2>>"$LOG")"
  say "$TORCH_VERSION, cmake prefix $torch_prefix"
  if [ -z "$torch_prefix" ]; then
    record "toolchain" "FAILED: $PYTHON cannot import torch"
    return 1
  fi
  PREFIX="$torch_prefix"
  [ -d "$ROOT/build-deps" ] && PREFIX="$PREFIX;$ROOT/build-deps"
  GEN=()
  command -v ninja >/dev/null && GEN=(-G Ninja)
  return 0
}

# configure_against_torch CMAKE_FLAGS...: the "configure" step of BUILD against that torch (after
# find_gpu_torch), Release, CUDA, no MPI, with the caller's flags added.
configure_against_torch() {
  step "configure" 120 cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    "${CUDA_CMAKE_FLAGS[@]}" -DONEBIT_WITH_TORCH=ON -DONEBIT_PYTHON="$(command -v "$PYTHON")" \
    -DONEBIT_WITH_MPI=OFF -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_POLICY_VERSION_MINIMUM=3.5 "$@"
}
