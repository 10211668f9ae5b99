// The kernel bodies compiled for the avx512 instruction set (flags set in CMakeLists.txt).
#define ONEBIT_ISA_NS onebit_isa_avx512
#include "simd_avx512.hpp"
#include "piece_impl.hpp"

namespace onebit::kernels {
const PieceKernels kAvx512Kernels = ONEBIT_ISA_NS::kTable;
}
