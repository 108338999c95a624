// The CUDA chain kernels as plain C++ for the CMake emulation target (the build defines
// ZF_CPU_EMULATION): a .cpp wrapper, so the .cu file itself stays a CUDA source for CMake.
#include "../chain_kernels.cu"
