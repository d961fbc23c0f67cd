// The bf16 product (Sources/CBF16) against OpenBLAS sgemm on the linear layers' shapes of
// `small` (1024 rows per worker), on THREADS cores (default one): GFLOP/s, best of 5, packing included.
//   cc -O3 -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mfma -ISources/CBF16/include -ISources/CBFloat16/include \
//      scripts/bf16_gemm_bench.c Sources/CBF16/bf16_gemm.c -lopenblas -lpthread -o /tmp/bf16_gemm_bench
//   env -u OPENBLAS_CORETYPE /tmp/bf16_gemm_bench [NATIVE [THREADS]]
//   (where OpenBLAS does not know the CPU, e.g. Intel family 6 model 207, it runs a generic kernel
//   at a fifth of the speed or less: give it OPENBLAS_CORETYPE=SkylakeX, as goml-dist does for itself)
//   (NATIVE 0: the emulation, for CPUs without AVX512_BF16)
#include "bf16_gemm.h"
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    int native = argc > 1 ? atoi(argv[1]) : 1, threads = argc > 2 ? atoi(argv[2]) : 1;
    goml_bf16_team *team = threads > 1 ? goml_bf16_team_create(threads) : NULL;
    // m, n, k, transA, transB: forward x·Wᵀ, backward dOut·W and dOutᵀ·x.
    long shapes[][5] = {{1024, 1152, 384, 0, 1}, {1024, 384, 1152, 0, 0}, {1152, 384, 1024, 1, 0},
                        {1024, 1024, 384, 0, 1}, {1024, 384, 1024, 0, 1}, {384, 1024, 1024, 1, 0}};
    openblas_set_num_threads(threads);
    for (int s = 0; s < 6; s++) {
        long m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        int ta = (int)shapes[s][3], tb = (int)shapes[s][4];
        float *a = malloc(4 * m * k), *b = malloc(4 * k * n), *c = malloc(4 * m * n);
        for (long i = 0; i < m * k; i++) a[i] = (float)(i % 7) * 0.1f;
        for (long i = 0; i < k * n; i++) b[i] = (float)(i % 5) * 0.1f;
        uint16_t *pa = malloc(2 * goml_bf16_packed_a_count(m, k)), *pb = malloc(2 * goml_bf16_packed_b_count(k, n));
        long lda = ta ? m : k, ldb = tb ? k : n;
        double bf16 = 1e9, sgemm = 1e9;
        // Each kernel's five runs in a row: OpenBLAS's threads spin a while after each sgemm,
        // which would take the team's core.
        for (int r = 0; r < 5; r++) {
            double t = now();
            goml_bf16_gemm(team, native, ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, n, pa, pb);
            if (now() - t < bf16) bf16 = now() - t;
        }
        for (int r = 0; r < 5; r++) {
            double t = now();
            cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                        (int)m, (int)n, (int)k, 1, a, (int)lda, b, (int)ldb, 0, c, (int)n);
            if (now() - t < sgemm) sgemm = now() - t;
        }
        printf("m %4ld n %4ld k %4ld transA %d transB %d: bf16 %6.1f GFLOP/s, sgemm %6.1f GFLOP/s\n", m, n, k, ta, tb,
               2.0 * m * n * k / bf16 / 1e9, 2.0 * m * n * k / sgemm / 1e9);
        free(a); free(b); free(c); free(pa); free(pb);
    }
    goml_bf16_team_destroy(team);
    return 0;
}
