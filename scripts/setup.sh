#!/usr/bin/env bash
# Installs onebit's dependencies from Debian's archive and builds it into build/ (the CLI is build/onebit).
# CUDA and NCCL are used when already installed (the toolkit is not a Debian package here).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES=(build-essential cmake git pkg-config
          libgtest-dev libgmock-dev nlohmann-json3-dev libcli11-dev
          libopenmpi-dev openmpi-bin
          iproute2 python3                            # onebit lan (ip, tc) and its tests
          libtorch-dev python3-torch python3-pybind11 pybind11-dev python3-dev python3-pytest
          python3-venv python3-pip python3-setuptools python3-wheel   # pip install . (scripts/check_pip.sh)
          clang libclang-rt-14-dev                     # sanitizer builds and the fuzzer
          libsentencepiece-dev libgloo-dev             # onebit train: tokenizer; Gloo headers for c10d
          libopenblas0-openmp                          # a real BLAS for libtorch (the default is netlib's, ~10x slower)
          fortunes                                     # the convergence study's causal-LM corpus
          python3.11-doc python3-matplotlib)           # onebit train's default corpus; compare's picture
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# nvcc lives outside PATH in the usual CUDA location.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

# ONEBIT_WERROR only when given, so a later plain set-up keeps the build (and does not rebuild it).
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${ONEBIT_WERROR:+-DONEBIT_WERROR=$ONEBIT_WERROR} ${ONEBIT_CMAKE_ARGS:-}
cmake --build build -j"$(nproc)"
# `import onebit` for Debian's python3 from any directory (when the build has torch).
if [ -d build/python/onebit ]; then
  $SUDO cmake --install build --component python >/dev/null
fi
