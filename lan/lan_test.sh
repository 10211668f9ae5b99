#!/usr/bin/env bash
# Tests of `onebit lan` and `onebit bench allreduce --rate` (root: network namespaces), one case per
# ctest entry: usage lan_test.sh ONEBIT PROBE CASE. Exit 0 pass, 1 fail, 77 skipped (not root).
set -uo pipefail
ONEBIT=$1 PROBE=$2 CASE=$3
WORK=$(mktemp -d /tmp/onebit-lan-test-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

fail() { echo "FAIL ($CASE): $*"; exit 1; }
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIPPED: the lan tests need root to create network namespaces"
  exit 77
fi
command -v ip >/dev/null || fail "iproute2 (ip, tc) is not installed: scripts/setup.sh installs it"

root_veths() { ip -o link show type veth 2>/dev/null | wc -l; }
VETHS_BEFORE=$(root_veths)

# Everything the onebit process with this pid made must be gone: namespaces, and no veth appeared here.
expect_clean() {
  local pid=$1
  local left
  left=$(ip netns list | awk '{print $1}' | grep "^onebit-$pid-" || true)
  [ -z "$left" ] || fail "namespaces left behind: $left"
  [ "$(root_veths)" -eq "$VETHS_BEFORE" ] || fail "veth count in the root namespace changed"
}

# The ranks' pids (written to $WORK/pid.<rank>) must be gone.
expect_ranks_dead() {
  for f in "$WORK"/pid.*; do
    [ -e "$f" ] || continue
    ! kill -0 "$(cat "$f")" 2>/dev/null || fail "rank process $(cat "$f") ($f) survived"
  done
}

# Pids of processes whose command line matches the extended regex $1 (arguments are separated by
# NUL there: match them with '.'), whose network namespace is neither this one nor a named one: what a
# teardown left behind (another run's live daemons sit in its own named namespaces). No procps needed.
orphans_matching() {
  local named f p ino
  named=" $(stat -L -c %i /proc/$$/ns/net) $(stat -L -c %i /var/run/netns/* 2>/dev/null | tr '\n' ' ') "
  for f in $(grep -a -l -E -e "$1" /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/cmdline}
    [ "$p" = "$$" ] && continue
    ino=$(stat -L -c %i "/proc/$p/ns/net" 2>/dev/null) || continue
    case "$named" in *" $ino "*) ;; *) echo "$p: $({ tr '\0' ' ' <"$f"; } 2>/dev/null)" ;; esac
  done
}

# Waits (at most $2 seconds) for pid $1 to exit and stores its exit status in $RC.
wait_for() {
  local pid=$1 limit=$2 i
  for ((i = 0; i < limit * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; fail "onebit still running after ${limit} s"; }
  wait "$pid"
  RC=$?
}

# Starts `onebit lan` in the background with ranks that record their pid and sleep.
start_sleepers() {
  "$ONEBIT" lan --workers 2 --rate 100mbit "$@" -- \
    sh -c 'echo $$ > '"$WORK"'/pid.$RANK; exec sleep 30' >"$WORK/out" 2>&1 &
  PID=$!
}

wait_for_pid_files() {
  local i
  for ((i = 0; i < 200; i++)); do
    [ -e "$WORK/pid.0" ] && [ -e "$WORK/pid.1" ] && return 0
    sleep 0.05
  done
  cat "$WORK/out"
  fail "the ranks did not start within 10 s"
}

case "$CASE" in
  throughput)  # 100mbit both ways: TCP goodput within 25% of the rate, in each direction.
    "$ONEBIT" lan --workers 2 --rate 100mbit --timeout 30 -- "$PROBE" --bytes 12500000 --expect-rate 100mbit \
      >"$WORK/out" 2>&1 &
    PID=$!
    wait_for "$PID" 40
    cat "$WORK/out"
    [ "$RC" -eq 0 ] || fail "onebit lan exited $RC"
    [ "$(grep -c 'Mbit/s rate: ok' "$WORK/out")" -eq 2 ] || fail "expected two in-tolerance transfers"
    grep -q '^\[rank 1\] rank 1 received' "$WORK/out" || fail "output not prefixed with the rank"
    expect_clean "$PID"
    ;;
  delay)  # --delay 5ms is one-way: a round trip takes 10 ms (plus little).
    "$ONEBIT" lan --workers 2 --rate 100mbit --delay 5ms --timeout 30 -- "$PROBE" --bytes 100000 \
      --min-rtt-ms 9.5 --max-rtt-ms 25 >"$WORK/out" 2>&1 &
    PID=$!
    wait_for "$PID" 40
    cat "$WORK/out"
    if grep -q "needs the kernel's netem qdisc" "$WORK/out"; then
      expect_clean "$PID"
      echo "SKIPPED: this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so --delay cannot work here;" \
        "onebit lan said so clearly and left nothing behind"
      exit 77
    fi
    [ "$RC" -eq 0 ] || fail "onebit lan exited $RC"
    expect_clean "$PID"
    ;;
  env)  # Each rank sees its rank, the world, worker 0's address and its own.
    "$ONEBIT" lan --workers 3 --rate 1gbit --master-port 4242 -- \
      sh -c 'echo "$RANK/$WORLD_SIZE $MASTER_ADDR:$MASTER_PORT $ONEBIT_LAN_ADDR"' >"$WORK/out" 2>&1 &
    PID=$!
    wait_for "$PID" 20
    cat "$WORK/out"
    [ "$RC" -eq 0 ] || fail "onebit lan exited $RC"
    for r in 0 1 2; do
      grep -qx "\[rank $r\] $r/3 10.213.0.1:4242 10.213.0.$((r + 1))" "$WORK/out" || fail "rank $r's environment"
    done
    expect_clean "$PID"
    ;;
  sigint | sigterm)  # Ctrl-C (or a kill) mid-run: the ranks die, the network goes, status 128+signal.
    start_sleepers --timeout 60
    wait_for_pid_files
    if [ "$CASE" = sigint ]; then kill -INT "$PID"; want=130; else kill -TERM "$PID"; want=143; fi
    wait_for "$PID" 10
    cat "$WORK/out"
    [ "$RC" -eq "$want" ] || fail "exit status $RC, expected $want"
    expect_ranks_dead
    expect_clean "$PID"
    ;;
  timeout)  # A rank past --timeout is killed; status 124 as timeout(1).
    start_sleepers --timeout 1
    wait_for "$PID" 10
    cat "$WORK/out"
    [ "$RC" -eq 124 ] || fail "exit status $RC, expected 124"
    grep -q "time limit" "$WORK/out" || fail "no time-limit message"
    expect_ranks_dead
    expect_clean "$PID"
    ;;
  failure)  # One rank fails: the others are stopped at once (SIGTERM, not the SIGKILL 3 s later).
    start_ns=$(date +%s%N)
    "$ONEBIT" lan --workers 3 --rate 100mbit --timeout 60 -- \
      sh -c 'echo $$ > '"$WORK"'/pid.$RANK; if [ "$RANK" = 1 ]; then exit 3; fi; exec sleep 30' \
      >"$WORK/out" 2>&1 &
    PID=$!
    wait_for "$PID" 10
    elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
    cat "$WORK/out"
    echo "stopped after $elapsed_ms ms"
    [ "$elapsed_ms" -lt 2800 ] || fail "took $elapsed_ms ms: the SIGTERM to the other ranks was lost"
    [ "$RC" -eq 3 ] || fail "exit status $RC, expected rank 1's 3"
    grep -q "rank 1 exited with status 3" "$WORK/out" || fail "no message naming the failed rank"
    expect_ranks_dead
    expect_clean "$PID"
    ;;
  stale)  # A namespace left by a dead onebit (SIGKILL) is removed, with what ran in it, by the next run.
    sh -c 'exit 0' &
    dead=$!
    wait "$dead"
    stale="onebit-$dead-0-w0"
    ip netns add "$stale" || fail "cannot create $stale"
    ip netns exec "$stale" sleep 60 &
    sleeper=$!
    "$ONEBIT" lan --workers 1 --rate 100mbit -- true >"$WORK/out" 2>&1
    RC=$?
    cat "$WORK/out"
    [ "$RC" -eq 0 ] || fail "onebit lan exited $RC"
    if ip netns list | grep -q "^$stale"; then ip netns delete "$stale"; fail "stale $stale was not removed"; fi
    wait_for "$sleeper" 5  # reaps it; its status is SIGKILL's
    [ "$RC" -eq 137 ] || fail "the process in the stale namespace ended with $RC, not SIGKILL"
    ;;
  not_root)  # Without root: one clear line and status 1.
    setpriv --reuid=65534 --regid=65534 --clear-groups "$ONEBIT" lan --workers 2 --rate 100mbit -- true \
      >"$WORK/out" 2>&1
    RC=$?
    cat "$WORK/out"
    [ "$RC" -eq 1 ] || fail "exit status $RC, expected 1"
    grep -q "lan needs root (network namespaces)" "$WORK/out" || fail "no clear message"
    ;;
  bench_mpi)  # MPI ranks really use the shaped links: fp32 takes at least its bytes at the rate.
    "$ONEBIT" bench allreduce --backend mpi --workers 2 --elements 1000000 --rate 100mbit --repeats 1 \
      --timeout 60 --out "$WORK/result.json" >"$WORK/out" 2>&1 &
    PID=$!
    wait_for "$PID" 70
    cat "$WORK/out"
    [ "$RC" -eq 0 ] || fail "bench exited $RC"
    python3 - "$WORK/result.json" <<'EOF' || fail "result check"
import json, sys
j = json.load(open(sys.argv[1]))
net = j["network"]
assert net["rate"] == "100mbit" and net["rate_bits_per_s"] == 100e6 and net["workers"] == 2, net
floor = j["bytes_per_rank"]["fp32"] * 8 / net["rate_bits_per_s"]
t = j["seconds"]["fp32"]
print(f"fp32 allreduce {t:.3f} s; its bytes at the link rate take {floor:.3f} s")
assert t >= 0.9 * floor, "faster than the link allows: the traffic did not cross the shaped links"
assert j["seconds"]["compressed"] < t, "compressed not faster"
EOF
    expect_clean "$PID"
    ;;
  bench_timeout)  # The MPI launch past --timeout: mpirun, the daemons lan-exec started and the ranks all go.
    "$ONEBIT" bench allreduce --backend mpi --workers 2 --elements 5000011 --rate 100mbit --repeats 5 \
      --timeout 3 >"$WORK/out" 2>&1 &
    PID=$!
    wait_for "$PID" 20
    cat "$WORK/out"
    [ "$RC" -eq 124 ] || fail "exit status $RC, expected 124"
    left=$(orphans_matching "--elements.5000011|orte_hnp_uri.[0-9.]*;tcp://10\.213\.0\.")
    [ -z "$left" ] || fail "processes left behind: $left"
    expect_clean "$PID"
    ;;
  *)
    fail "unknown case"
    ;;
esac
echo "PASS ($CASE)"
