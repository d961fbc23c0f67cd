// float32 products on one thread: OpenBLAS's sgemm (goml-dist's float32 path) against oneDNN's
// dnnl_sgemm, on the linear layers' shapes of small (1024 rows per worker) and base (2048) and on
// attention's blocks (128 rows, head dimension 64): GFLOP/s, best of REPEATS (default 5).
//   cc -O2 -fopenmp scripts/sgemm_libraries_bench.c -lopenblas -ldnnl -o /tmp/sgemm_libraries_bench
//   /tmp/sgemm_libraries_bench [REPEATS]
//   (on a CPU OpenBLAS 0.3.21 does not know, such as Intel family 6 model 207, prefix
//   OPENBLAS_CORETYPE=SkylakeX, as goml-dist sets it for itself)
#include <cblas.h>
#include <dnnl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    int repeats = argc > 1 ? atoi(argv[1]) : 5;
    omp_set_num_threads(1);
    openblas_set_num_threads(1);
    // m, n, k, transA, transB: forward x·Wᵀ, backward dOut·W and dOutᵀ·x; attention's q·kᵀ, p·v, dsᵀ·q.
    long shapes[][5] = {{1024, 1152, 384, 0, 1}, {1024, 384, 1152, 0, 0}, {1152, 384, 1024, 1, 0},
                        {1024, 1024, 384, 0, 1}, {1024, 384, 1024, 0, 1}, {384, 1024, 1024, 1, 0},
                        {2048, 2304, 768, 0, 1}, {2048, 768, 2304, 0, 0}, {2304, 768, 2048, 1, 0},
                        {128, 128, 64, 0, 1}, {128, 64, 128, 0, 0}, {128, 64, 128, 1, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        long m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        int ta = (int)shapes[s][3], tb = (int)shapes[s][4];
        float *a = malloc(4 * m * k), *b = malloc(4 * k * n), *c = malloc(4 * m * n);
        for (long i = 0; i < m * k; i++) a[i] = (float)(i % 7) * 0.1f;
        for (long i = 0; i < k * n; i++) b[i] = (float)(i % 5) * 0.1f;
        long lda = ta ? m : k, ldb = tb ? k : n;
        // Small products are timed over many calls, as attention makes them.
        int calls = m * n * k < 10000000 ? 200 : 1;
        double openblas = 1e9, onednn = 1e9;
        for (int r = 0; r < repeats; r++) {
            double t = now();
            for (int i = 0; i < calls; i++)
                cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                            (int)m, (int)n, (int)k, 1, a, (int)lda, b, (int)ldb, 0, c, (int)n);
            if ((now() - t) / calls < openblas) openblas = (now() - t) / calls;
            t = now();
            for (int i = 0; i < calls; i++)
                dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1, a, lda, b, ldb, 0, c, n);
            if ((now() - t) / calls < onednn) onednn = (now() - t) / calls;
        }
        double flops = 2.0 * m * n * k;
        printf("m %4ld n %4ld k %4ld transA %d transB %d: OpenBLAS %6.1f GFLOP/s, oneDNN %6.1f GFLOP/s, oneDNN / OpenBLAS %.2f\n",
               m, n, k, ta, tb, flops / openblas / 1e9, flops / onednn / 1e9, openblas / onednn);
        free(a); free(b); free(c);
    }
    return 0;
}
