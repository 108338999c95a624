// The CUDA kernels as plain C++ for the CMake emulation targets (the build defines
// ZF_CPU_EMULATION): a .cpp wrapper, so the .cu file itself stays a CUDA source for CMake.
#include "../lstm_kernels.cu"
