// bf16_gemm: C = alpha·op(A)·op(B) + beta·C (row-major float32 in and out) with bfloat16
// operands and float32 accumulation on AVX512_BF16 dot products. Operands are rounded to
// bfloat16 while they are packed (the pass every GEMM makes), into caller-owned workspaces:
// no allocation. `native` 1 only where the CPU has AVX512_BF16; 0 emulates its dot product on
// any AVX-512 CPU (same results, slower than float32).
#include <stddef.h>
#include <stdint.h>

/// bfloat16 elements the packed A (m×k) and packed B (k×n) workspaces need.
size_t goml_bf16_packed_a_count(long m, long k);
size_t goml_bf16_packed_b_count(long k, long n);

/// Helper threads that split each product with its caller (threads − 1 of them, at most 64;
/// fewer if the system refuses more), or NULL for the caller alone. Results do not depend on
/// the thread count. Not for concurrent callers.
typedef struct goml_bf16_team goml_bf16_team;
goml_bf16_team *goml_bf16_team_create(int threads);
void goml_bf16_team_destroy(goml_bf16_team *team);
int goml_bf16_team_threads(const goml_bf16_team *team);
/// Units of work helper `helper` has taken so far (tests check the helpers work).
long goml_bf16_team_helped(const goml_bf16_team *team, int helper);

void goml_bf16_gemm(goml_bf16_team *team, int native, int trans_a, int trans_b, long m, long n, long k, float alpha,
                    const float *a, long lda, const float *b, long ldb,
                    float beta, float *c, long ldc, uint16_t *packed_a, uint16_t *packed_b);

/// Packs op(B) (k×n) once, for products that reuse it (constant weights).
void goml_bf16_pack_b(uint16_t *packed_b, int trans_b, const float *b, long ldb, long k, long n);

/// goml_bf16_gemm with op(B) packed by goml_bf16_pack_b.
void goml_bf16_gemm_packed_b(goml_bf16_team *team, int native, int trans_a, long m, long n, long k, float alpha, const float *a, long lda,
                             const uint16_t *packed_b, float beta, float *c, long ldc, uint16_t *packed_a);

/// out[i] = bf16(x[i]), rounded to nearest even.
void goml_bf16_round(uint16_t *out, const float *x, long count);
