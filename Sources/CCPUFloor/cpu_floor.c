// See cpu_floor.h. Built for baseline x86-64 (this target sets no CPU flags), so the check
// itself runs anywhere.
#include "cpu_floor.h"
#include <unistd.h>

#if defined(__x86_64__)
__attribute__((constructor)) static void check_cpu_floor(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return;
    static const char message[] =
        "goml-dist: error: this CPU lacks AVX2 and FMA, which goml-dist is built for (x86-64 since Intel Haswell and AMD Zen); "
        "to run here, remove cpuFloor's -target-cpu from Package.swift and rebuild\n";
    (void)!write(STDERR_FILENO, message, sizeof message - 1);
    _exit(2);
}
#endif
