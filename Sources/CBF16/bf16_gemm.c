// bf16_gemm: packing (float32 → bfloat16 pairs, zero-padded) and an 8×32 register-tile
// microkernel on vdpbf16ps. Packed A: per 8-row panel, per k pair, 8 rows × 2 values (one
// 32-bit word per row, broadcast). Packed B: per 32-column panel, per k pair, 32 columns × 2
// values (two zmm). Each vdpbf16ps adds a pair of products to 16 float32 accumulators.
// Without AVX512_BF16 (other AVX-512 CPUs) the same kernel emulates vdpbf16ps as Intel
// documents it: same packing, same order, same results; slower than float32.
#include "bf16_gemm.h"
#include "goml_bfloat16.h"
#include <immintrin.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { MR = 8, NR = 32 };

static inline long pairs(long k) { return (k + 1) / 2; }

size_t goml_bf16_packed_a_count(long m, long k) { return (size_t)((m + MR - 1) / MR) * MR * pairs(k) * 2; }
size_t goml_bf16_packed_b_count(long k, long n) { return (size_t)((n + NR - 1) / NR) * NR * pairs(k) * 2; }

// bf16 bits of 16 floats (in the low halves of 16 lanes): goml_bf16_from_float vectorised, the
// same bits for every value (a NaN truncated with its quiet bit set, two instructions).
static inline __m512i round16(__m512 x) {
    __m512i bits = _mm512_castps_si512(x), high = _mm512_srli_epi32(bits, 16);
    __m512i lsb = _mm512_and_si512(high, _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    return _mm512_mask_or_epi32(rounded, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), high, _mm512_set1_epi32(0x40));
}

void goml_bf16_round(uint16_t *out, const float *x, long count) {
    long i = 0;
    for (; i + 16 <= count; i += 16) _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtepi32_epi16(round16(_mm512_loadu_ps(x + i))));
    for (; i < count; i++) out[i] = goml_bf16_from_float(x[i]);
}

// Pair words of two 8-float vectors: word r = bf16(lo[r]) | bf16(hi[r]) << 16 (rounded as one
// vector of 16).
static inline __m256i pair_words(__m256 lo, __m256 hi) {
    __m512 both = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
    __m512i words = round16(both);
    return _mm256_or_si256(_mm512_castsi512_si256(words), _mm256_slli_epi32(_mm512_extracti64x4_epi64(words, 1), 16));
}

// 8 source rows × 16 floats (8 pairs along the row) → 8 pair indices × 8 rows: row r's pair q
// goes to word r of dst + q·stride (stride in uint16).
static inline void transpose_pack_8x8(const float *src, long ld, uint16_t *dst, long stride) {
    __m256i r[8];
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_cvtepi32_epi16(round16(_mm512_loadu_ps(src + i * ld)));   // 16 bf16 = 8 pair words, low half the even k
    }
    __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    __m256i t4 = _mm256_unpacklo_epi32(r[4], r[5]), t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    __m256i t6 = _mm256_unpacklo_epi32(r[6], r[7]), t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    __m256i s0 = _mm256_unpacklo_epi64(t0, t2), s1 = _mm256_unpackhi_epi64(t0, t2);
    __m256i s2 = _mm256_unpacklo_epi64(t1, t3), s3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i s4 = _mm256_unpacklo_epi64(t4, t6), s5 = _mm256_unpackhi_epi64(t4, t6);
    __m256i s6 = _mm256_unpacklo_epi64(t5, t7), s7 = _mm256_unpackhi_epi64(t5, t7);
    _mm256_storeu_si256((__m256i *)(dst + 0 * stride), _mm256_permute2x128_si256(s0, s4, 0x20));
    _mm256_storeu_si256((__m256i *)(dst + 1 * stride), _mm256_permute2x128_si256(s1, s5, 0x20));
    _mm256_storeu_si256((__m256i *)(dst + 2 * stride), _mm256_permute2x128_si256(s2, s6, 0x20));
    _mm256_storeu_si256((__m256i *)(dst + 3 * stride), _mm256_permute2x128_si256(s3, s7, 0x20));
    _mm256_storeu_si256((__m256i *)(dst + 4 * stride), _mm256_permute2x128_si256(s0, s4, 0x31));
    _mm256_storeu_si256((__m256i *)(dst + 5 * stride), _mm256_permute2x128_si256(s1, s5, 0x31));
    _mm256_storeu_si256((__m256i *)(dst + 6 * stride), _mm256_permute2x128_si256(s2, s6, 0x31));
    _mm256_storeu_si256((__m256i *)(dst + 7 * stride), _mm256_permute2x128_si256(s3, s7, 0x31));
}

// opA[i][kk] = trans ? a[kk·lda + i] : a[i·lda + kk]; zero outside m×k; row panels
// [first, last) only. Full panels take the vector paths; edges the scalar one (same rounding).
static void pack_a(uint16_t *out, int trans, const float *a, long lda, long m, long k, long first, long last) {
    long kp = pairs(k), full = k / 2;   // pairs with both values inside k
    for (long i0 = first * MR; i0 < m && i0 < last * MR; i0 += MR) {
        uint16_t *panel = out + (i0 / MR) * MR * kp * 2;
        long rows = m - i0 < MR ? m - i0 : MR;
        long p = 0;
        if (rows == MR && trans) {
            for (; p < full; p++) {
                __m256i w = pair_words(_mm256_loadu_ps(a + 2 * p * lda + i0), _mm256_loadu_ps(a + (2 * p + 1) * lda + i0));
                _mm256_storeu_si256((__m256i *)(panel + p * MR * 2), w);
            }
        } else if (rows == MR) {
            for (; p + 8 <= full; p += 8) transpose_pack_8x8(a + i0 * lda + 2 * p, lda, panel + p * MR * 2, MR * 2);
        }
        for (; p < kp; p++) {
            long k0 = 2 * p, k1 = 2 * p + 1;
            uint16_t *word = panel + p * MR * 2;
            for (long r = 0; r < MR; r++) {
                float x0 = 0, x1 = 0;
                if (r < rows) {
                    long i = i0 + r;
                    x0 = trans ? a[k0 * lda + i] : a[i * lda + k0];
                    if (k1 < k) x1 = trans ? a[k1 * lda + i] : a[i * lda + k1];
                }
                word[r * 2] = goml_bf16_from_float(x0);
                word[r * 2 + 1] = goml_bf16_from_float(x1);
            }
        }
    }
}

// opB[kk][j] = trans ? b[j·ldb + kk] : b[kk·ldb + j]; zero outside k×n; column panels [first, last) only.
static void pack_b(uint16_t *out, int trans, const float *b, long ldb, long k, long n, long first, long last) {
    long kp = pairs(k), full = k / 2;
    for (long j0 = first * NR; j0 < n && j0 < last * NR; j0 += NR) {
        uint16_t *panel = out + (j0 / NR) * NR * kp * 2;
        long width = n - j0 < NR ? n - j0 : NR;
        long p = 0;
        if (width == NR && trans) {
            for (; p + 8 <= full; p += 8)
                for (long g = 0; g < NR / 8; g++)
                    transpose_pack_8x8(b + (j0 + 8 * g) * ldb + 2 * p, ldb, panel + p * NR * 2 + 8 * g * 2, NR * 2);
        } else if (width == NR) {
            for (; p < full; p++)
                for (long g = 0; g < NR / 8; g++) {
                    __m256i w = pair_words(_mm256_loadu_ps(b + 2 * p * ldb + j0 + 8 * g), _mm256_loadu_ps(b + (2 * p + 1) * ldb + j0 + 8 * g));
                    _mm256_storeu_si256((__m256i *)(panel + p * NR * 2 + 8 * g * 2), w);
                }
        }
        for (; p < kp; p++) {
            uint16_t *row = panel + p * NR * 2;
            long k0 = 2 * p, k1 = 2 * p + 1;
            for (long j = 0; j < NR; j++) {
                float x0 = 0, x1 = 0;
                if (j < width) {
                    long col = j0 + j;
                    x0 = trans ? b[col * ldb + k0] : b[k0 * ldb + col];
                    if (k1 < k) x1 = trans ? b[col * ldb + k1] : b[k1 * ldb + col];
                }
                row[j * 2] = goml_bf16_from_float(x0);
                row[j * 2 + 1] = goml_bf16_from_float(x1);
            }
        }
    }
}

// The bf16 pair words' odd (high) and even (low) values as float32: exact, as make_fp32 is.
static inline __m512 odd_values(__m512i words) { return _mm512_castsi512_ps(_mm512_and_si512(words, _mm512_set1_epi32((int)0xFFFF0000u))); }
static inline __m512 even_values(__m512i words) { return _mm512_castsi512_ps(_mm512_slli_epi32(words, 16)); }

// C tile (rows × cols ≤ mr × NR) = alpha·Apanel·Bpanel + beta·C, accumulating mr (MR, or 1
// for a single row, as decoding has) of the panel's rows. `native` and `mr` are constants at
// each call, so each kernel keeps only its own loop.
static inline __attribute__((always_inline)) void tile(int native, int mr, const uint16_t *ap, const uint16_t *bp, long kp,
                                                       float alpha, float beta, float *c, long ldc, long rows, long cols) {
    __m512 acc[MR][2];
    for (int r = 0; r < mr; r++) { acc[r][0] = _mm512_setzero_ps(); acc[r][1] = _mm512_setzero_ps(); }
    const uint32_t *aw = (const uint32_t *)ap;
    if (native) {
        for (long p = 0; p < kp; p++) {
            __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * NR * 2));
            __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * NR * 2 + 32));
            for (int r = 0; r < mr; r++) {
                __m512bh av = (__m512bh)_mm512_set1_epi32((int)aw[p * MR + r]);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
            }
        }
    } else {
        // vdpbf16ps per Intel's SDM: per lane, acc += odd·odd, then acc += even·even, each an
        // exact bf16 product added with one rounding (an FMA), round to nearest even, denormal
        // inputs read as zero and denormal results flushed (DAZ and FTZ, set in MXCSR here).
        unsigned int csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040);
        for (long p = 0; p < kp; p++) {
            __m512i b0 = _mm512_loadu_si512((const void *)(bp + p * NR * 2));
            __m512i b1 = _mm512_loadu_si512((const void *)(bp + p * NR * 2 + 32));
            __m512 b0odd = odd_values(b0), b0even = even_values(b0), b1odd = odd_values(b1), b1even = even_values(b1);
            for (int r = 0; r < mr; r++) {
                __m512i av = _mm512_set1_epi32((int)aw[p * MR + r]);
                __m512 aodd = odd_values(av), aeven = even_values(av);
                acc[r][0] = _mm512_fmadd_ps(aeven, b0even, _mm512_fmadd_ps(aodd, b0odd, acc[r][0]));
                acc[r][1] = _mm512_fmadd_ps(aeven, b1even, _mm512_fmadd_ps(aodd, b1odd, acc[r][1]));
            }
        }
        _mm_setcsr(csr);
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    for (long r = 0; r < rows; r++) {
        float *cr = c + r * ldc;
        __m512 v0 = _mm512_mul_ps(acc[r][0], va), v1 = _mm512_mul_ps(acc[r][1], va);
        if (beta != 0) {
            v0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, cr), vb, v0);
            v1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, cr + 16), vb, v1);
        }
        _mm512_mask_storeu_ps(cr, m0, v0);
        _mm512_mask_storeu_ps(cr + 16, m1, v1);
    }
}

void goml_bf16_pack_b(uint16_t *packed_b, int trans_b, const float *b, long ldb, long k, long n) {
    pack_b(packed_b, trans_b, b, ldb, k, n, 0, (n + NR - 1) / NR);
}

typedef void (*tile_kernel)(const uint16_t *, const uint16_t *, long, float, float, float *, long, long, long);

static void native_tile(const uint16_t *ap, const uint16_t *bp, long kp, float alpha, float beta, float *c, long ldc, long rows, long cols) {
    tile(1, MR, ap, bp, kp, alpha, beta, c, ldc, rows, cols);
}

static void emulated_tile(const uint16_t *ap, const uint16_t *bp, long kp, float alpha, float beta, float *c, long ldc, long rows, long cols) {
    tile(0, MR, ap, bp, kp, alpha, beta, c, ldc, rows, cols);
}

static void native_row(const uint16_t *ap, const uint16_t *bp, long kp, float alpha, float beta, float *c, long ldc, long rows, long cols) {
    tile(1, 1, ap, bp, kp, alpha, beta, c, ldc, rows, cols);
}

static void emulated_row(const uint16_t *ap, const uint16_t *bp, long kp, float alpha, float beta, float *c, long ldc, long rows, long cols) {
    tile(0, 1, ap, bp, kp, alpha, beta, c, ldc, rows, cols);
}

// One product as units of work, taken in order from one cursor by every thread of the team:
// first the A row panels and the B column panels to pack, then the C tiles (a whole row of
// them per unit when there are enough rows, single tiles otherwise, as when decoding one row).
// Every C element is summed by one thread in the same order as alone, so the result does not
// depend on the thread count.
struct product {
    tile_kernel kernel, row_kernel;   // a panel's rows; its one row (the last panel of an m ≡ 1 mod MR)
    int trans_a, trans_b;
    long m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;          // b NULL: packed_b is ready
    float *c;
    uint16_t *packed_a, *packed_b;
    long a_panels, b_panels, pack_units, units, row_units;
    _Atomic long cursor, packed;
};

static void prepare(struct product *p, int threads) {
    p->a_panels = (p->m + MR - 1) / MR;
    p->b_panels = (p->n + NR - 1) / NR;
    p->pack_units = p->a_panels + (p->b ? p->b_panels : 0);
    p->row_units = p->a_panels >= 4 * threads;
    p->units = p->pack_units + (p->row_units ? p->a_panels : p->a_panels * p->b_panels);
    atomic_store(&p->cursor, 0);
    atomic_store(&p->packed, 0);
}

static void compute_tiles(const struct product *p, long i, long j_first, long j_last) {
    long kp = pairs(p->k), i0 = i * MR, rows = p->m - i0 < MR ? p->m - i0 : MR;
    const uint16_t *ap = p->packed_a + i * MR * kp * 2;
    for (long j = j_first; j < j_last; j++) {
        long j0 = j * NR, cols = p->n - j0 < NR ? p->n - j0 : NR;
        (rows == 1 ? p->row_kernel : p->kernel)(ap, p->packed_b + j * NR * kp * 2, kp, p->alpha, p->beta, p->c + i0 * p->ldc + j0, p->ldc, rows, cols);
    }
}

// Takes units until none is left (returns how many); a tile waits for every packing unit to be finished.
static long work(struct product *p) {
    long taken = 0;
    for (long u; (u = atomic_fetch_add_explicit(&p->cursor, 1, memory_order_relaxed)) < p->units; taken++) {
        if (u < p->a_panels) {
            pack_a(p->packed_a, p->trans_a, p->a, p->lda, p->m, p->k, u, u + 1);
        } else if (u < p->pack_units) {
            long j = u - p->a_panels;
            pack_b(p->packed_b, p->trans_b, p->b, p->ldb, p->k, p->n, j, j + 1);
        } else {
            while (atomic_load_explicit(&p->packed, memory_order_acquire) < p->pack_units) _mm_pause();
            long t = u - p->pack_units;
            if (p->row_units) compute_tiles(p, t, 0, p->b_panels);
            else compute_tiles(p, t / p->b_panels, t % p->b_panels, t % p->b_panels + 1);
            continue;
        }
        atomic_fetch_add_explicit(&p->packed, 1, memory_order_release);
    }
    return taken;
}

// The team: helper threads that wait for a product, spinning briefly and then asleep on a
// futex, so the products of one worker can use the cores its rank has beside it. A helper
// that wakes late takes whatever units are left; the caller waits only for helpers that
// entered the product (`inside`), never for one still asleep.
struct goml_bf16_team {
    int helpers;
    pthread_t *threads;
    _Atomic uint32_t generation;    // bumped per product (futex word)
    _Atomic int sleepers, inside, open, stop;
    struct product *current;
    _Atomic long helped[64];        // units each helper took (tests ask)
};

enum { SPINS = 4000 };   // about 0.1–0.2 ms of pause before a helper sleeps

static void futex_wait(_Atomic uint32_t *word, uint32_t expected) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

struct helper_start { struct goml_bf16_team *team; int index; };

static void *helper_main(void *arg) {
    struct helper_start start = *(struct helper_start *)arg;
    free(arg);
    struct goml_bf16_team *team = start.team;
    uint32_t seen = 0;
    for (;;) {
        uint32_t now;
        for (int spins = 0; (now = atomic_load(&team->generation)) == seen;) {
            if (++spins < SPINS) { _mm_pause(); continue; }
            atomic_fetch_add(&team->sleepers, 1);
            futex_wait(&team->generation, seen);
            atomic_fetch_sub(&team->sleepers, 1);
            spins = 0;
        }
        seen = now;
        if (atomic_load(&team->stop)) return NULL;
        // Enter, then check the product is still open: the caller closes it and then waits
        // for `inside` to drop to zero, so a late helper either works on it or never touches it.
        atomic_fetch_add(&team->inside, 1);
        if (atomic_load(&team->open)) {
            atomic_fetch_add_explicit(&team->helped[start.index], work(team->current), memory_order_relaxed);
        }
        atomic_fetch_sub(&team->inside, 1);
    }
}

goml_bf16_team *goml_bf16_team_create(int threads) {
    struct goml_bf16_team *team = calloc(1, sizeof *team);
    team->helpers = threads - 1 < 64 ? threads - 1 : 64;
    team->threads = calloc((size_t)(team->helpers > 0 ? team->helpers : 1), sizeof(pthread_t));
    for (int i = 0; i < team->helpers; i++) {
        struct helper_start *start = malloc(sizeof *start);
        *start = (struct helper_start){team, i};
        if (pthread_create(&team->threads[i], NULL, helper_main, start) != 0) {   // fewer threads, same results
            free(start);
            team->helpers = i;
        }
    }
    return team;
}

void goml_bf16_team_destroy(goml_bf16_team *team) {
    if (!team) return;
    atomic_store(&team->stop, 1);
    atomic_fetch_add(&team->generation, 1);
    futex_wake_all(&team->generation);
    for (int i = 0; i < team->helpers; i++) pthread_join(team->threads[i], NULL);
    free(team->threads);
    free(team);
}

int goml_bf16_team_threads(const goml_bf16_team *team) { return team ? team->helpers + 1 : 1; }

long goml_bf16_team_helped(const goml_bf16_team *team, int helper) {
    return team && helper < team->helpers ? atomic_load(&team->helped[helper]) : 0;
}

// Products below this many multiply-adds (n·k at least: one decoded row) run on the caller
// alone: waking a helper costs more.
enum { TEAM_MIN_MACS = 1L << 18 };

static void run(goml_bf16_team *team, struct product *p) {
    int threads = goml_bf16_team_threads(team);
    if (threads == 1 || p->m * p->n * p->k < TEAM_MIN_MACS) {
        prepare(p, 1);
        work(p);
        return;
    }
    prepare(p, threads);
    team->current = p;
    atomic_store(&team->open, 1);
    atomic_fetch_add(&team->generation, 1);
    if (atomic_load(&team->sleepers) > 0) futex_wake_all(&team->generation);
    work(p);
    atomic_store(&team->open, 0);
    while (atomic_load(&team->inside) > 0) _mm_pause();   // a helper leaves after its last unit's writes
}

// One product's units built once, for both entry points (b NULL: op(B) is packed already).
static void multiply(goml_bf16_team *team, int native, int trans_a, int trans_b, long m, long n, long k, float alpha,
                     const float *a, long lda, const float *b, long ldb, float beta, float *c, long ldc,
                     uint16_t *packed_a, uint16_t *packed_b) {
    struct product p = {.kernel = native ? native_tile : emulated_tile, .row_kernel = native ? native_row : emulated_row,
                        .trans_a = trans_a, .trans_b = trans_b, .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb, .ldc = ldc,
                        .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c, .packed_a = packed_a, .packed_b = packed_b};
    run(team, &p);
}

void goml_bf16_gemm_packed_b(goml_bf16_team *team, int native, int trans_a, long m, long n, long k, float alpha, const float *a, long lda,
                             const uint16_t *packed_b, float beta, float *c, long ldc, uint16_t *packed_a) {
    multiply(team, native, trans_a, 0, m, n, k, alpha, a, lda, NULL, 0, beta, c, ldc, packed_a, (uint16_t *)packed_b);
}

void goml_bf16_gemm(goml_bf16_team *team, int native, int trans_a, int trans_b, long m, long n, long k, float alpha,
                    const float *a, long lda, const float *b, long ldb,
                    float beta, float *c, long ldc, uint16_t *packed_a, uint16_t *packed_b) {
    multiply(team, native, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, packed_a, packed_b);
}
