#!/usr/bin/env bash
# What a user of the `onebit` command sees, one case per ctest entry: usage cli_test.sh ONEBIT CASE.
#   json_local, json_gloo, json_mpi, json_rate, json_rate_mpi: `--json` prints exactly one JSON
#     document on stdout (python3 -m json.tool reads it), logs go to stderr; json_rate also checks
#     that `bench allreduce --rate` without --backend runs over gloo (the rate cases need root).
#   help: every command's --help ends with one example of that command.
#   errors: errors name the setting and what is valid, with no source file:line and no 300-digit bounds.
# Exit 0 pass, 1 fail, 77 skipped (a --rate case without root).
set -uo pipefail
ONEBIT=$1 CASE=$2
WORK=$(mktemp -d /tmp/onebit-cli-test-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() { echo "FAIL ($CASE): $*"; exit 1; }

# json BACKEND-NAME ARGS...: runs bench allreduce ARGS --json; stdout must be one JSON document whose
# backend is BACKEND-NAME.
json() {
  local backend=$1
  shift
  "$ONEBIT" bench allreduce --workers 2 --elements 200000 --repeats 2 "$@" --json >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  echo "--- stderr:"; cat "$WORK/err"
  [ "$rc" -eq 0 ] || { cat "$WORK/out"; fail "exit status $rc"; }
  python3 -m json.tool "$WORK/out" >/dev/null || { echo "--- stdout:"; cat "$WORK/out"; fail "stdout is not one JSON document"; }
  python3 - "$WORK/out" "$backend" <<'PY' || fail "the JSON"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["bench"] == "allreduce" and j["workers"] == 2 and j["backend"] == sys.argv[2], (j["backend"], sys.argv[2])
print("one JSON document, backend", j["backend"], "transport:", j["transport"])
PY
}

need_root() {
  if [ "$(id -u)" -ne 0 ]; then echo "SKIPPED: --rate needs root (network namespaces)"; exit 77; fi
}

case "$CASE" in
  json_local) json local ;;
  json_gloo) json gloo --backend gloo ;;
  json_mpi) json mpi --backend mpi ;;
  json_rate) need_root; json gloo --rate 1gbit ;;  # no --backend: gloo
  json_rate_mpi) need_root; json mpi --rate 1gbit --backend mpi ;;
  help)
    for cmd in "" "bench" "bench compress" "bench allreduce" "bench step" "plan" "lan" "train" "compare"; do
      # shellcheck disable=SC2086
      if [ "$cmd" = "train" ] || [ "$cmd" = "compare" ]; then
        "$ONEBIT" --help | grep -q "^  $cmd " || continue  # built without libtorch
      fi
      "$ONEBIT" $cmd --help >"$WORK/help" 2>&1 || fail "onebit $cmd --help exited $?"
      last=$(grep -v '^[[:space:]]*$' "$WORK/help" | tail -n 1)
      before=$(grep -v '^[[:space:]]*$' "$WORK/help" | tail -n 2 | head -n 1)
      [ "$before" = "Example:" ] || fail "onebit $cmd --help does not end with an example: ...$before / $last"
      [[ "$last" == "  onebit ${cmd}"* ]] || fail "onebit $cmd --help ends with an example of another command: $last"
      echo "onebit $cmd --help: $last"
    done
    ;;
  errors)
    check() {  # check 'REGEX' ARGS...: fails with exit 1 and one line on stderr matching REGEX
      local want=$1
      shift
      "$ONEBIT" "$@" >"$WORK/out" 2>"$WORK/err"
      local rc=$?
      echo "onebit $*: $(cat "$WORK/err")"
      [ "$rc" -eq 1 ] || fail "exit status $rc, not 1"
      [ ! -s "$WORK/out" ] || fail "an error wrote to stdout: $(cat "$WORK/out")"
      grep -qE "$want" "$WORK/err" || fail "expected /$want/"
      ! grep -qE '\.(cpp|hpp):[0-9]+' "$WORK/err" || fail "the message names a source file and line"
      [ "$(wc -c <"$WORK/err")" -lt 300 ] || fail "the message is $(wc -c <"$WORK/err") bytes"
    }
    check "^onebit: --params: must be a number > 0, not '-5'" plan --params -5 --workers 2 --bandwidth 1gbit
    check "^onebit: --freeze-fraction: must be a number from 0 to 1, not '2'" plan --params 5 --workers 2 --bandwidth 1gbit --freeze-fraction 2
    check "^onebit: --workers: .* 1 to 4096" bench allreduce --workers 0 --elements 10
    check "^onebit: --elements: must be a positive integer, not '0'" bench allreduce --workers 2 --elements 0
    check "^onebit: --timeout: must be a number from 1 to 10000000, not '0'" bench allreduce --workers 2 --elements 10 --timeout 0
    check "^onebit: plan: unknown unit 'zz' in bandwidth '1zz' \(known: " plan --params 5 --workers 2 --bandwidth 1zz
    check "^onebit: --backend: nccl not in \{local,mpi,gloo\}" bench allreduce --workers 2 --elements 10 --backend nccl
    if "$ONEBIT" --help | grep -q "^  train "; then
      check "^onebit train: --steps must be at least 1, not 0$" train --steps 0 --out "$WORK/run"
      check "^onebit train: --lr must be positive, not -1$" train --lr -1 --out "$WORK/run"
    fi
    ;;
  *) fail "unknown case" ;;
esac
echo "PASS ($CASE)"
