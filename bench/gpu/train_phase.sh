#!/usr/bin/env bash
# The training phase of the GPU run: builds `onebit` (train and compare) against this machine's own
# torch (the pip wheel, with CUDA) and trains BERT on the GPU:
#   1. a smoke run: mini BERT, bf16, one worker over NCCL;
#   2. a smoke run: mini BERT, bf16, two workers sharing the GPU over Gloo (host staging);
#   3. the step breakdown: BERT-Large (seq 128, bf16, micro-batches of 32, the mini vocabulary),
#      two workers sharing the GPU over Gloo, LAMB and 1-bit LAMB (frozen after step 2), 6 steps each,
#      and torch's fused AdamW step on the same parameters as the peer line (bench/gpu/adamw_peer.py);
#   4. the GPU convergence run: `onebit compare` (LAMB against 1-bit LAMB with the defaults), mini
#      BERT, 4 workers on one GPU over Gloo, TRAIN_STEPS steps of TRAIN_BATCH sequences, bf16;
#   5. bench/results/<gpu>-train.json from them (bench/gpu/train_results.py): step_breakdown, and
#      convergence.gap (1-bit LAMB's final held-out loss over LAMB's, minus 1) and
#      convergence.byte_ratio (bytes per worker, LAMB over 1-bit LAMB), with the loss curves and the
#      picture in bench/results/<gpu>-train/.
# A failed step is reported and the next one still runs where it can; the script always exits 0 and
# ends with a summary.
#
#   bash bench/gpu/train_phase.sh
#
# The corpus: DATA (files or folders of text), else build-deps/corpus (bench/gpu/pack_deps.sh copies
# this machine's python3.11-doc there), else onebit train's default. Gloo's headers: libtorch's own,
# else build-deps/include (pack_deps.sh copies libgloo-dev's).
# Environment: BUILD_TRAIN (build folder, default build-gpu-train), CUDA_ARCH (default 90), JOBS,
# PYTHON (default python3), BUDGET_S (default 600), TRAIN_STEPS (default 1000), TRAIN_BATCH
# (default 1024), OUT (if set, the log, the summary and the results are copied there too).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${BUILD_TRAIN:-$ROOT/build-gpu-train}"
BUDGET_S="${BUDGET_S:-600}"
TRAIN_STEPS="${TRAIN_STEPS:-1000}"
TRAIN_BATCH="${TRAIN_BATCH:-1024}"
START=$(date +%s)
PHASE=train_phase
source "$ROOT/bench/gpu/phase_lib.sh"

find_gpu_torch || exit 0
if ! configure_against_torch -DONEBIT_BUILD_TRAIN=ON -DONEBIT_BUILD_TESTS=OFF; then
  record "training" "NOT RUN: configure failed (SentencePiece, Gloo headers, nlohmann-json or CLI11 missing? run bench/gpu/pack_deps.sh where they are and carry build-deps/)"
  exit 0
fi
step "build onebit" 240 cmake --build "$BUILD" -j "$JOBS" --target onebit || exit 0

DATA_ARGS=()
if [ -n "${DATA:-}" ]; then
  DATA_ARGS=(--data "$DATA")
elif [ -d "$ROOT/build-deps/corpus" ]; then
  DATA_ARGS=(--data "$ROOT/build-deps/corpus")
fi
CLI="$BUILD/onebit"
COMMON=(--device cuda --precision bf16 "${DATA_ARGS[@]}" --cache-dir "$BUILD/cache")

step "train: 1 worker, NCCL, bf16" 120 "$CLI" train "${COMMON[@]}" --model mini --backend nccl --workers 1 \
  --steps 20 --batch 64 --out "$BUILD/smoke-nccl"
step "train: 2 workers on one GPU, Gloo" 120 "$CLI" train "${COMMON[@]}" --model mini --backend gloo --workers 2 \
  --steps 20 --batch 64 --out "$BUILD/smoke-gloo"

BREAKDOWN=()
for opt in lamb onebit-lamb; do
  rm -rf "$BUILD/breakdown-$opt"
  freeze=()
  [ "$opt" = onebit-lamb ] && freeze=(--freeze-step 2)
  step "breakdown: BERT-Large, $opt" 150 "$CLI" train "${COMMON[@]}" --model large --vocab 8192 --backend gloo \
    --workers 2 --optimizer "$opt" "${freeze[@]}" --steps 6 --batch 64 --micro-batch 32 --eval-every 1000 \
    --eval-samples 64 --out "$BUILD/breakdown-$opt" && BREAKDOWN+=(--breakdown "$opt=$BUILD/breakdown-$opt")
done

# The peer line: torch's fused AdamW step on the same parameters.
step "breakdown: fused AdamW peer" 60 "$PYTHON" "$ROOT/bench/gpu/adamw_peer.py" "$BUILD/adamw.json" --vocab 8192 &&
  BREAKDOWN+=(--adamw "$BUILD/adamw.json")

# compare exits 1 when only its picture failed (no matplotlib): the results are kept either way.
rm -rf "$BUILD/compare"
step "convergence: compare, 4 workers, ${TRAIN_STEPS} x ${TRAIN_BATCH}" 330 "$CLI" compare "${COMMON[@]}" --model mini \
  --backend gloo --workers 4 --steps "$TRAIN_STEPS" --batch "$TRAIN_BATCH" --micro-batch 256 --out "$BUILD/compare"
COMPARE=()
[ -f "$BUILD/compare/compare.json" ] && COMPARE=(--compare "$BUILD/compare")
if [ ${#COMPARE[@]} -gt 0 ] || [ ${#BREAKDOWN[@]} -gt 0 ]; then
  step "results: <gpu>-train.json" 30 "$PYTHON" "$ROOT/bench/gpu/train_results.py" "$GPU_NAME" "$ROOT/bench/results" \
    "${COMPARE[@]}" "${BREAKDOWN[@]}" && [ -n "${OUT:-}" ] && cp -r "$ROOT"/bench/results/*-train* "$OUT/" 2>/dev/null
else
  record "results: <gpu>-train.json" "NOT WRITTEN: no run finished"
fi
exit 0
