// oneDNN's C API (libdnnl-dev): here, which instruction set (and so whether bf16 dot products)
// the CPU offers, honouring ONEDNN_MAX_CPU_ISA.
#include <dnnl.h>
