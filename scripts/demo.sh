#!/usr/bin/env bash
# Installs, builds, and runs onebit's main job: the compressed allreduce against MPI's own fp32
# allreduce on 4 real processes, and the compression kernel against memcpy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
build/onebit bench allreduce --backend mpi --workers 4 --elements 25000000
build/onebit bench compress
