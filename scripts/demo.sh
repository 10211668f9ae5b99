#!/usr/bin/env bash
# Installs, builds, and runs onebit's main job: `onebit compare`, LAMB against 1-bit LAMB on the
# same BERT pre-training run (4 worker processes over Gloo), then the compressed allreduce against
# MPI's own fp32 allreduce on 4 real processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
build/onebit compare --out out/compare
build/onebit bench allreduce --backend mpi --workers 4 --elements 25000000
