// The kernel bodies compiled for the generic instruction set (flags set in CMakeLists.txt).
#define ONEBIT_ISA_NS onebit_isa_generic
#include "simd_generic.hpp"
#include "piece_impl.hpp"

namespace onebit::kernels {
const PieceKernels kGenericKernels = ONEBIT_ISA_NS::kTable;
}
