#!/usr/bin/env bash
# The PyTorch user's path, offline: a fresh venv that sees Debian's torch (--system-site-packages),
# `pip install --no-build-isolation .` (no index: nothing may be downloaded), `import onebit` from
# another directory, the example on 2 processes and under torchrun with 4, then `pip wheel`.
# PYTHON picks the interpreter (default /usr/bin/python3, the one with Debian's torch).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
TMP="$(mktemp -d /tmp/onebit-pip-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
"$PYTHON" -m venv --system-site-packages "$TMP/venv"
PY="$TMP/venv/bin/python"
t0=$(date +%s)
(cd "$ROOT" && "$PY" -m pip install --no-build-isolation -q . >"$TMP/pip.log" 2>&1) || { cat "$TMP/pip.log"; exit 1; }
echo "check_pip: pip install --no-build-isolation . in a fresh venv: $(($(date +%s) - t0)) s"
cd "$TMP"
"$PY" -c 'import sys, onebit
assert onebit.__file__.startswith(sys.prefix + "/"), "onebit imported from %s, not the venv" % onebit.__file__
print("check_pip: import onebit %s from %s" % (onebit.__version__, onebit.__file__))'
"$PY" "$ROOT/examples/train_onebit_lamb.py" --world-size 2 --steps 60 | grep "held-out loss"
# Debian 12's torch 1.13 on Python 3.11 cannot parse torchrun's default --redirects/--tee "0".
"$PY" -m torch.distributed.run --standalone --nproc_per_node 4 --redirects 2 --tee 2 \
  "$ROOT/examples/train_onebit_lamb.py" --steps 60 | grep "held-out loss .* on 4 ranks"
t0=$(date +%s)
(cd "$ROOT" && "$PY" -m pip wheel --no-build-isolation --no-deps -q -w "$TMP/wheels" . >"$TMP/pip.log" 2>&1) ||
  { cat "$TMP/pip.log"; exit 1; }
echo "check_pip: pip wheel: $(cd "$TMP/wheels" && ls onebit-*.whl) ($(($(date +%s) - t0)) s)"
