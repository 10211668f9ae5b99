#!/usr/bin/env bash
# Where a surviving rank of the lost-rank scenario dies (python/tests test_distributed.py -k
# killed_rank): runs its three ranks by hand, rank 0 under gdb when the machine has it, and prints
# every rank's log and rank 0's native backtrace. For the GPU machine, after bench/gpu/torch_phase.sh
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
GDB=()
command -v gdb >/dev/null && GDB=(gdb -q -batch -ex run -ex "thread apply all bt 25" --args)
echo "lost_rank_backtrace: kill step $KILL_STEP, watch $WATCH, gdb: ${GDB[*]:-none}"
for r in 1 2; do
  timeout 120 "$PYTHON" "$WORKER" killed_rank "$r" 3 "$PORT" "$DIR" "$ARGS" >"$DIR/rank$r.log" 2>&1 &
done
timeout 120 "${GDB[@]}" "$PYTHON" "$WORKER" killed_rank 0 3 "$PORT" "$DIR" "$ARGS" >"$DIR/rank0.log" 2>&1
echo "rank 0 exit status $?"
wait
for r in 0 1 2; do echo "--- rank $r ---"; tail -c 6000 "$DIR/rank$r.log"; done
