/* Prompt-sized matmuls (many activation rows) against the same 4-bit weight records as gemv_w4a8.c:
 * y[m, n] = sum_k w[n, k] x[m, k], w = q * scale + min per block of 32 inputs.
 *
 * The activations are quantized exactly as for decode (16-bit integers per block of 32, the same scale and
 * rounding), so a prompt and a decode step see the same numbers; only the integer dot is organized differently.
 * With many rows the work is arithmetic, not bytes. gemv_w4a8 splits each integer into two int8 planes and
 * spends two byte multiplies (maddubs) plus a widening one per 32 products; here an integer stays 16 bits and
 * meets the weights as int16 in _mm256_madd_epi16, 16 products an instruction, the fewest multiplies for exact
 * 16-bit activations on AVX2.
 *
 * The product is an outer product, so no horizontal sums are needed: a vector holds one input pair (k, k + 1)
 * of eight activation rows (activations are re-laid out so, once per call), and the weight row's pair is
 * broadcast to all eight lanes; madd gives each lane its row's two products, and 16 pairs summed in int32 are the
 * block's exact dot for eight rows at once (|dot| <= 32 * 15 * 32639 < 2^24, exact in float). One conversion
 * and one FMA then scale it by the activation rows' block scales times the weight row's; one more FMA adds the
 * minimum's term, min * scale_a * sum(a). A pass takes four weight rows (a record tile) against two vectors of
 * activation rows: each broadcast feeds two multiplies and each activation load four, and the 8 int32 and 8
 * float accumulators stay in registers (a third vector measured 40% slower, spilling; one vector 25% slower;
 * the same tile with horizontal sums, four rows against one activation row a vector, 30% slower).
 * Widening the nibbles to int16 costs about what the multiplies do, so each thread widens a tile once into a
 * small buffer (L1-sized for the default model's K) and reuses it for every activation row.
 * Parallel over tiles of four weight rows (OpenMP, libgomp as PyTorch's); the activation rows are quantized in
 * parallel first. Built by build.py; no Python headers.
 */
#include <stdlib.h>
#include <string.h>

#include "w4a8.h"

#define LANES 8  /* activation rows a vector, one int32 lane each */
#define PASS 2   /* vectors of activation rows a pass over a tile's blocks */

/* One block of a tile widened: four rows of 32 int16 weights, then their scales and minimums. */
typedef struct {
    int16_t q[TILE][BLOCK];
    float scale[TILE], min[TILE];
} tile_q16;

/* x [k] float -> q [k] int16 per block of 32, with the scales and scaled sums of quantize_row (w4a8.h): the
 * same integers x = 256 hi + lo that decode's two planes hold. */
static inline void quantize_row16(const float *x, int k, int16_t *q, float *s, float *sums) {
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    for (int b = 0; b < k / BLOCK; b++) {
        __m256i i[4];
        float scale = block_integers(x + b * BLOCK, i);
        /* packs interleaves 128-bit lanes (0-3, 8-11, 4-7, 12-15); the permute puts the 64-bit quarters back */
        _mm256_storeu_si256((__m256i *)(q + b * BLOCK), _mm256_permutevar8x32_epi32(_mm256_packs_epi32(i[0], i[1]), order));
        _mm256_storeu_si256((__m256i *)(q + b * BLOCK + 16),
                            _mm256_permutevar8x32_epi32(_mm256_packs_epi32(i[2], i[3]), order));
        s[b] = scale;
        sums[b] = scale * (float)block_sum(i);
    }
}

/* A tile's records -> its blocks widened. */
static void widen_tile(const tile_q4 *w, int blocks, tile_q16 *out) {
    const __m128i low_mask = _mm_set1_epi8(0x0F);
    for (int b = 0; b < blocks; b++) {
        const tile_q4 *t = w + b;
        tile_q16 *o = out + b;
        for (int r = 0; r < TILE; r++) {
            __m128i bytes = _mm_loadu_si128((const __m128i *)t->nibbles[r]);
            __m128i first = _mm_and_si128(bytes, low_mask), second = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_mask);
            _mm256_storeu_si256((__m256i *)o->q[r], _mm256_cvtepu8_epi16(first));
            _mm256_storeu_si256((__m256i *)(o->q[r] + 16), _mm256_cvtepu8_epi16(second));
            o->scale[r] = t->scale[r];
            o->min[r] = t->min[r];
        }
    }
}

/* A widened tile against V vectors of activation rows: a [V][k / 2][8] int32 (each an input pair of eight rows;
 * vector v at a + v * vstride), s and sums [V][blocks][8] (at v * sstride). out[(v * 4 + r) * 8 + lane]. */
static inline __attribute__((always_inline)) void tile_rows(const tile_q16 *w, int blocks, const int32_t *a,
                                                            long vstride, const float *s, const float *sums,
                                                            long sstride, int V, float *out) {
    __m256 acc[PASS][TILE];
    for (int v = 0; v < V; v++)
        for (int r = 0; r < TILE; r++) acc[v][r] = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        const tile_q16 *t = w + b;
        const int32_t *pairs = (const int32_t *)t->q;  /* [4][16]: row r's input pair p at r * 16 + p */
        __m256i dot[PASS][TILE];
        for (int v = 0; v < V; v++)
            for (int r = 0; r < TILE; r++) dot[v][r] = _mm256_setzero_si256();
        for (int p = 0; p < BLOCK / 2; p++) {
            __m256i x[PASS];
            for (int v = 0; v < V; v++)
                x[v] = _mm256_loadu_si256((const __m256i *)(a + v * vstride + ((long)b * (BLOCK / 2) + p) * LANES));
            for (int r = 0; r < TILE; r++) {
                __m256i wp = _mm256_set1_epi32(pairs[r * (BLOCK / 2) + p]);
                for (int v = 0; v < V; v++) dot[v][r] = _mm256_add_epi32(dot[v][r], _mm256_madd_epi16(wp, x[v]));
            }
        }
        for (int v = 0; v < V; v++) {
            __m256 sa = _mm256_loadu_ps(s + v * sstride + (long)b * LANES);
            __m256 sm = _mm256_loadu_ps(sums + v * sstride + (long)b * LANES);
            for (int r = 0; r < TILE; r++) {
                acc[v][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[v][r]), _mm256_mul_ps(sa, _mm256_set1_ps(t->scale[r])),
                                            acc[v][r]);
                acc[v][r] = _mm256_fmadd_ps(sm, _mm256_set1_ps(t->min[r]), acc[v][r]);
            }
        }
    }
    for (int v = 0; v < V; v++)
        for (int r = 0; r < TILE; r++) _mm256_storeu_ps(out + (v * TILE + r) * LANES, acc[v][r]);
}

/* Bytes of `work` gemm_w4a8 needs for m rows of k inputs: per vector of eight rows, k / 2 int32 pairs and
 * k / 32 scales and sums each. */
long gemm_w4a8_work(int m, int k) {
    long vectors = (m + LANES - 1) / LANES;
    return vectors * LANES * (2L * k + 8L * (k / BLOCK));
}

/* x [m, k] float32, w [ceil(n / 4), k / 32] tiles (rows past n zero), y [m, n] float32; k a multiple of 32;
 * work: gemm_w4a8_work(m, k) bytes. Returns 0, or -1 when a thread's buffers could not be allocated (y unset). */
int gemm_w4a8(const float *x, const tile_q4 *w, float *y, int m, int n, int k, void *work) {
    int blocks = k / BLOCK, tiles = (n + TILE - 1) / TILE, vectors = (m + LANES - 1) / LANES, failed = 0;
    long vstride = (long)(k / 2) * LANES, sstride = (long)blocks * LANES;
    int32_t *a = (int32_t *)work;
    float *s = (float *)(a + vectors * vstride), *sums = s + vectors * sstride;
    #pragma omp parallel
    {
        int16_t *row = malloc(sizeof(int16_t) * k + 2 * sizeof(float) * blocks);
        tile_q16 *wide = malloc(sizeof(tile_q16) * blocks);
        if (!row || !wide) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        if (!failed) {
            /* Each row quantized, then its int16 pairs scattered into lane r % 8 of its vector; padding rows 0. */
            float *rs = (float *)(row + k), *rsums = rs + blocks;
            #pragma omp for schedule(static)
            for (int r = 0; r < vectors * LANES; r++) {
                if (r < m) {
                    quantize_row16(x + (long)r * k, k, row, rs, rsums);
                } else {
                    memset(row, 0, sizeof(int16_t) * k);
                    memset(rs, 0, 2 * sizeof(float) * blocks);
                }
                int v = r / LANES, lane = r % LANES;
                const int32_t *pairs = (const int32_t *)row;
                for (int p = 0; p < k / 2; p++) a[v * vstride + (long)p * LANES + lane] = pairs[p];
                for (int b = 0; b < blocks; b++) {
                    s[v * sstride + (long)b * LANES + lane] = rs[b];
                    sums[v * sstride + (long)b * LANES + lane] = rsums[b];
                }
            }
            #pragma omp for schedule(static)
            for (int t = 0; t < tiles; t++) {
                widen_tile(w + (long)t * blocks, blocks, wide);
                int j = TILE * t, rows = n - j < TILE ? n - j : TILE;
                float out[PASS * TILE * LANES];
                for (int v0 = 0; v0 < vectors;) {
                    int count = vectors - v0 >= PASS ? PASS : 1;  /* the last odd vector alone */
                    if (count == PASS)
                        tile_rows(wide, blocks, a + v0 * vstride, vstride, s + v0 * sstride, sums + v0 * sstride,
                                  sstride, PASS, out);
                    else
                        tile_rows(wide, blocks, a + v0 * vstride, vstride, s + v0 * sstride, sums + v0 * sstride,
                                  sstride, 1, out);
                    for (int v = 0; v < count; v++) {
                        int first = (v0 + v) * LANES, lanes = m - first < LANES ? m - first : LANES;
                        for (int c = 0; c < lanes; c++)
                            for (int i = 0; i < rows; i++) y[(long)(first + c) * n + j + i] = out[(v * TILE + i) * LANES + c];
                    }
                    v0 += count;
                }
            }
        }
        free(wide);
        free(row);
    }
    return failed ? -1 : 0;
}
