#!/usr/bin/env bash
# Installs, builds (warnings are errors) and runs every test: GoogleTest suites, MPI runs under mpirun.
set -euo pipefail
cd "$(dirname "$0")/.."
ONEBIT_WERROR=ON scripts/setup.sh
# OpenMPI refuses root unless told; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build --output-on-failure --timeout 600 -j2
