#!/usr/bin/env bash
# Runs onebit_mpi_fault_test on 4 ranks under mpirun: the job must exit non-zero within 90 s, and
# the lost rank (3) must be named: by every survivor's error (stall), or by mpirun (kill -9).
# usage: mpi_fault_test.sh MPIEXEC EXECUTABLE kill|stall
set -u
mpiexec=$1 exe=$2 mode=$3
t0=$(date +%s%N)
out=$(timeout -s KILL 90 "$mpiexec" --allow-run-as-root --oversubscribe --bind-to none -np 4 "$exe" "$mode" 2>&1)
rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "$out" | tail -n 40
echo "mpi $mode: the job exited with $rc after $ms ms"
[ "$rc" -ne 0 ] || { echo "FAIL: the job exited 0"; exit 1; }
[ "$ms" -lt 90000 ] || { echo "FAIL: still running after 90 s"; exit 1; }
if [ "$mode" = stall ]; then
  for r in 0 1 2; do
    echo "$out" | grep -q "^rank $r: mpi allreduce on rank $r of 4: no answer within 5000 ms; no answer from rank 3 to a roll call" ||
      { echo "FAIL: rank $r did not end naming rank 3"; exit 1; }
  done
else
  echo "$out" | grep -q "process rank 3 .*signal 9" || { echo "FAIL: nothing names rank 3 as killed"; exit 1; }
fi
echo "PASS"
