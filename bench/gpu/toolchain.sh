# Sourced by the GPU scripts (run.sh, torch_phase.sh): finds the CUDA compiler and NCCL on the GPU
# machine, where NCCL may exist only inside the Python package nvidia.nccl (no network to fetch it).
#
#   find_gpu_toolchain DIR   DIR: a folder of the caller's build tree for links to the package's NCCL
#
# Sets NVCC and CUDA_ROOT; NCCL_ROOT (empty when CUDA's own folder has NCCL, or the environment's);
# CUDA_CMAKE_FLAGS, the CMake flags for CUDA (architecture CUDA_ARCH, default 90) and NCCL; puts
# NCCL's libraries on LD_LIBRARY_PATH. Logs through the caller's say(); returns 1 without nvcc.

find_gpu_toolchain() {
  local links="$1" pkg so
  NVCC="$(command -v nvcc || true)"
  [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
  [ -n "$NVCC" ] || { say "no nvcc on PATH or in /usr/local/cuda/bin"; return 1; }
  CUDA_ROOT="$(dirname "$(dirname "$(readlink -f "$NVCC")")")"
  say "nvcc: $NVCC ($("$NVCC" --version | grep -o 'release [0-9.]*'))"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee -a "$LOG" || true

  # NCCL: the system's, else the Python package's, with the unversioned .so the linker wants.
  NCCL_ROOT="${NCCL_ROOT:-}"
  if [ -z "$NCCL_ROOT" ] && [ ! -f "$CUDA_ROOT/include/nccl.h" ]; then
    pkg="$(python3 -c 'import nvidia.nccl as n, os; print(os.path.dirname(n.__file__) if n.__file__ else list(n.__path__)[0])' 2>/dev/null || true)"
    if [ -n "$pkg" ] && [ -f "$pkg/include/nccl.h" ]; then
      NCCL_ROOT="$links"
      mkdir -p "$NCCL_ROOT/lib"
      ln -sfn "$pkg/include" "$NCCL_ROOT/include"
      for so in "$pkg"/lib/libnccl.so*; do ln -sf "$so" "$NCCL_ROOT/lib/$(basename "$so")"; done
      [ -e "$NCCL_ROOT/lib/libnccl.so" ] || ln -sf "$pkg/lib/libnccl.so.2" "$NCCL_ROOT/lib/libnccl.so"
      say "NCCL from the Python package: $pkg"
    fi
  fi
  [ -n "$NCCL_ROOT" ] && export LD_LIBRARY_PATH="$NCCL_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

  CUDA_CMAKE_FLAGS=(-DCMAKE_CUDA_COMPILER="$NVCC" -DCUDAToolkit_ROOT="$CUDA_ROOT"
                    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DONEBIT_WITH_CUDA=ON -DONEBIT_WITH_NCCL=ON)
  [ -n "$NCCL_ROOT" ] && CUDA_CMAKE_FLAGS+=(-DNCCL_ROOT="$NCCL_ROOT")
  return 0
}
