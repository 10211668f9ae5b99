#!/usr/bin/env bash
# Copies the header-only and static build dependencies the GPU machine may lack (nlohmann-json,
# CLI11, GoogleTest; Gloo's headers for train_phase.sh, used where libtorch ships none) and onebit
# train's default corpus (python3.11-doc's sources, as build-deps/corpus) from this machine's Debian
# packages into build-deps/ (ignored by git through
# /build*/), a relocatable CMake prefix that bench/gpu/run.sh uses when it is there. Carry it to the
# GPU machine with the working tree (the device tool's `carry: ["build-deps"]`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/build-deps"
ARCH_LIB=/usr/lib/x86_64-linux-gnu
rm -rf "$DEST"
mkdir -p "$DEST/include" "$DEST/share/cmake" "$DEST/lib/x86_64-linux-gnu/cmake"
for h in nlohmann CLI gtest gmock; do
  [ -d "/usr/include/$h" ] || { echo "pack_deps: /usr/include/$h missing (install nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev)" >&2; exit 1; }
  cp -r "/usr/include/$h" "$DEST/include/"
done
for c in nlohmann_json CLI11; do cp -r "/usr/share/cmake/$c" "$DEST/share/cmake/"; done
cp -r "$ARCH_LIB/cmake/GTest" "$DEST/lib/x86_64-linux-gnu/cmake/"
cp "$ARCH_LIB"/libgtest*.a "$ARCH_LIB"/libgmock*.a "$DEST/lib/x86_64-linux-gnu/"
if [ -d /usr/include/gloo ]; then
  cp -r /usr/include/gloo "$DEST/include/"
else
  echo "pack_deps: no /usr/include/gloo (libgloo-dev): train_phase.sh then needs libtorch's own" >&2
fi
CORPUS=/usr/share/doc/python3.11/html/_sources
if [ -d "$CORPUS" ]; then
  cp -rL "$CORPUS" "$DEST/corpus"
else
  echo "pack_deps: no $CORPUS (python3.11-doc): train_phase.sh then needs DATA" >&2
fi
echo "pack_deps: $(du -sh "$DEST" | cut -f1) in $DEST"
