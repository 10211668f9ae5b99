#!/usr/bin/env bash
# Where a surviving rank of the lost-rank scenario dies (python/tests test_distributed.py -k
# killed_rank): runs its three ranks by hand and prints every rank's log with its native backtrace
# on SIGABRT (abort_backtrace.c, preloaded, since that machine has no gdb; frames in onebit's module
# resolved with addr2line). It found the torch 2.11 abort that torch/watchdog.cpp's parse now avoids. For the GPU machine, after bench/gpu/torch_phase.sh
# has built the Python module (BUILD_TORCH, default build-gpu-torch).
#
#   bash bench/gpu/lost_rank_backtrace.sh [KILL_STEP [WATCH]]     # defaults: 1 true (as the test)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${BUILD_TORCH:-$ROOT/build-gpu-torch}"
PYTHON="${PYTHON:-python3}"
KILL_STEP="${1:-1}"
WATCH="${2:-true}"
DIR="$(mktemp -d)"
export PYTHONPATH="$BUILD/python:$ROOT/python/tests"
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ARGS='{"kind": "onebit-lamb", "options": {"lr": 0.01, "freeze_step": 3, "weight_decay": 0.01, "timeout": 10.0, "watch": '"$WATCH"'}, "kill_step": '"$KILL_STEP"'}'
WORKER="$ROOT/python/tests/_worker.py"
cd "$DIR"
cc -shared -fPIC -O1 -o "$DIR/abort_backtrace.so" "$ROOT/bench/gpu/abort_backtrace.c" || exit 1
echo "lost_rank_backtrace: kill step $KILL_STEP, watch $WATCH"
for r in 0 1 2; do
  LD_PRELOAD="$DIR/abort_backtrace.so" timeout 120 "$PYTHON" "$WORKER" killed_rank "$r" 3 "$PORT" "$DIR" "$ARGS" \
    >"$DIR/rank$r.log" 2>&1 &
done
wait
for r in 0 1 2; do
  echo "--- rank $r ---"
  tail -c 8000 "$DIR/rank$r.log"
  # "lib.so(+0x1234)" frames of onebit's own libraries, as function and line
  grep -oE '^[^ ()]*onebit[^ ()]*\.so[^ ()]*\(\+0x[0-9a-f]+\)' "$DIR/rank$r.log" | sed -E 's/\(\+(0x[0-9a-f]+)\)/ \1/' |
    while read -r lib off; do echo "$lib $off: $(addr2line -f -C -e "$lib" "$off" 2>/dev/null | paste -sd' ')"; done
done
