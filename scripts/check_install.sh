#!/usr/bin/env bash
# The C++ user's path: `cmake --install BUILD --prefix TMP`, then examples/cpp (find_package(onebit
# CONFIG REQUIRED), onebit::onebit, and onebit::torch when BUILD has it) configured, built and run
# from a temporary folder outside the source tree. Usage: scripts/check_install.sh [BUILD]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$(cd "${1:-$ROOT/build}" && pwd)"
TMP="$(mktemp -d /tmp/onebit-consumer-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
cmake --install "$BUILD" --prefix "$TMP/prefix" >/dev/null
cp -r "$ROOT/examples/cpp" "$TMP/consumer"
cd "$TMP/consumer"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B build "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TMP/prefix" >build.log 2>&1 ||
  { cat build.log; exit 1; }
cmake --build build -j"$(nproc)" >>build.log 2>&1 || { cat build.log; exit 1; }
build/lamb_consumer
if grep -q "onebit_HAS_TORCH ON" "$TMP/prefix/lib/cmake/onebit/onebitConfig.cmake"; then
  [ -x build/torch_consumer ] || { echo "check_install: onebit::torch exists but torch_consumer was not built"; exit 1; }
  build/torch_consumer
fi
