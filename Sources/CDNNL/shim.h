// oneDNN's C API (libdnnl-dev). Debian's oneDNN runs on OpenMP, whose team size is set per
// calling thread: each worker thread asks for its own.
#include <dnnl.h>
void omp_set_num_threads(int);
