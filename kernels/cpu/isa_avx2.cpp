// The kernel bodies compiled for the avx2 instruction set (flags set in CMakeLists.txt).
#define ONEBIT_ISA_NS onebit_isa_avx2
#include "simd_avx2.hpp"
#include "piece_impl.hpp"

namespace onebit::kernels {
const PieceKernels kAvx2Kernels = ONEBIT_ISA_NS::kTable;
}
