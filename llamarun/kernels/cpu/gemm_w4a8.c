/* Prompt-sized matmuls (many activation rows) against the same 4-bit weight records as gemv_w4a8.c:
 * y[m, n] = sum_k w[n, k] x[m, k], w = q * scale + min per block of 32 inputs.
 *
 * The activations are quantized exactly as for decode (16-bit integers per block of 32, the same scale and
 * rounding), so a prompt and a decode step see the same numbers; only the integer dot is organized differently.
 * With many rows the work is arithmetic, not bytes: gemv_w4a8's two int8 planes cost two byte multiplies
 * (maddubs) plus a widening multiply per 32 products. Here each row stays one int16 vector and meets the weights
 * as int16 in one _mm256_madd_epi16 per 16 products, the fewest multiplies for exact 16-bit activations on AVX2.
 * Widening the nibbles to int16 would cost more than the multiply, so each thread widens one tile of four weight
 * rows once into a small buffer (L1-sized for the default model's K) and reuses it for every activation row.
 *
 * Per block, four weight rows against one activation row give four vectors of eight partial sums; two rounds of
 * horizontal adds fold them into one vector (rows 0-3 twice), which one conversion and one FMA scale by the
 * weight rows' scales times the activation block's scale (exact before that: |dot| <= 32 * 15 * 32639 < 2^24).
 * The minimums' term, min * scale_a * sum(a), is one more FMA with the minimums in the low half only.
 * Parallel over tiles of four weight rows (OpenMP, libgomp as PyTorch's); the activation rows are quantized in
 * parallel first. Built by build.py; no Python headers.
 */
#include <stdlib.h>

#include "w4a8.h"

#ifndef COLS
#define COLS 2  /* activation rows per pass over a tile's blocks */
#endif

/* One block of a tile widened: four rows of 32 int16 weights, then scale[r] and min[r] laid out for the folded
 * sums (lanes r and r + 4: scale twice, the minimum once). 320 bytes, 32-byte aligned. */
typedef struct {
    int16_t q[TILE][BLOCK];
    float scale[8], min[8];
} tile_q16;

/* x [k] float -> q [k] int16 per block of 32, with the scales and scaled sums of quantize_row (w4a8.h): the
 * same integers x = 256 hi + lo that decode's two planes hold. */
static inline void quantize_row16(const float *x, int k, int16_t *q, float *s, float *sums) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    for (int b = 0; b < k / BLOCK; b++) {
        const float *xb = x + b * BLOCK;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16),
               v3 = _mm256_loadu_ps(xb + 24);
        __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                    _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float scale = _mm_cvtss_f32(m4) / (float)LIMIT;
        __m256 inv = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv)),
                i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
        /* packs interleaves 128-bit lanes (0-3, 8-11, 4-7, 12-15); the permute puts the 64-bit quarters back */
        _mm256_storeu_si256((__m256i *)(q + b * BLOCK), _mm256_permutevar8x32_epi32(_mm256_packs_epi32(i0, i1), order));
        _mm256_storeu_si256((__m256i *)(q + b * BLOCK + 16),
                            _mm256_permutevar8x32_epi32(_mm256_packs_epi32(i2, i3), order));
        __m256i total = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
        s[b] = scale;
        sums[b] = scale * (float)_mm_cvtsi128_si32(t4);
    }
}

/* Tile t's records -> blocks widened tiles. */
static void widen_tile(const tile_q4 *w, int blocks, tile_q16 *out) {
    const __m128i low_mask = _mm_set1_epi8(0x0F);
    for (int b = 0; b < blocks; b++) {
        const tile_q4 *t = w + b;
        tile_q16 *o = out + b;
        for (int r = 0; r < TILE; r++) {
            __m128i bytes = _mm_loadu_si128((const __m128i *)t->nibbles[r]);
            __m128i first = _mm_and_si128(bytes, low_mask), second = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_mask);
            _mm256_store_si256((__m256i *)o->q[r], _mm256_cvtepu8_epi16(first));
            _mm256_store_si256((__m256i *)(o->q[r] + 16), _mm256_cvtepu8_epi16(second));
        }
        for (int r = 0; r < TILE; r++) {
            o->scale[r] = o->scale[r + 4] = t->scale[r];
            o->min[r] = t->min[r];
            o->min[r + 4] = 0.0f;
        }
    }
}

/* One widened tile against C activation rows (int16, row stride k): out[c * 4 + r]. */
static inline __attribute__((always_inline)) void dot_tile16(
        const tile_q16 *w, int blocks, const int16_t *q, int k, const float *s, const float *sums, int C, float *out) {
    __m256 acc[COLS];
    for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        const tile_q16 *t = w + b;
        __m256 scale = _mm256_load_ps(t->scale), mins = _mm256_load_ps(t->min);
        for (int c = 0; c < C; c++) {
            const int16_t *a = q + (long)c * k + b * BLOCK;
            long at = (long)c * (k / BLOCK) + b;
            __m256i a0 = _mm256_loadu_si256((const __m256i *)a), a1 = _mm256_loadu_si256((const __m256i *)(a + 16));
            __m256i r[TILE];
            for (int i = 0; i < TILE; i++)
                r[i] = _mm256_add_epi32(_mm256_madd_epi16(_mm256_load_si256((const __m256i *)t->q[i]), a0),
                                        _mm256_madd_epi16(_mm256_load_si256((const __m256i *)(t->q[i] + 16)), a1));
            __m256i folded = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(folded), _mm256_mul_ps(scale, _mm256_set1_ps(s[at])), acc[c]);
            acc[c] = _mm256_fmadd_ps(mins, _mm256_set1_ps(sums[at]), acc[c]);
        }
    }
    for (int c = 0; c < C; c++) {
        __m128 sum = _mm_add_ps(_mm256_castps256_ps128(acc[c]), _mm256_extractf128_ps(acc[c], 1));
        _mm_storeu_ps(out + c * TILE, sum);
    }
}

/* x [m, k] float32, w [ceil(n / 4), k / 32] tiles (rows past n zero), y [m, n] float32; k a multiple of 32;
 * work: 2 * m * k bytes (int16 rows) + 8 * m * (k / 32) bytes (scales, sums). Returns 0, or -1 when the
 * widened-tile buffers could not be allocated (nothing written to y). */
int gemm_w4a8(const float *x, const tile_q4 *w, float *y, int m, int n, int k, void *work) {
    int blocks = k / BLOCK, tiles = (n + TILE - 1) / TILE, failed = 0;
    int16_t *q = (int16_t *)work;
    float *s = (float *)(q + (long)m * k), *sums = s + (long)m * blocks;
    #pragma omp parallel
    {
        #pragma omp for schedule(static)
        for (int r = 0; r < m; r++)
            quantize_row16(x + (long)r * k, k, q + (long)r * k, s + (long)r * blocks, sums + (long)r * blocks);
        tile_q16 *wide = aligned_alloc(32, sizeof(tile_q16) * blocks);
        if (!wide) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        if (!failed) {
            #pragma omp for schedule(static)
            for (int t = 0; t < tiles; t++) {
                widen_tile(w + (long)t * blocks, blocks, wide);
                int j = TILE * t, rows = n - j < TILE ? n - j : TILE;
                float out[COLS * TILE];
                for (int c0 = 0; c0 < m;) {
                    /* COLS rows a pass; the last m % COLS one at a time */
                    int cols = m - c0 >= COLS ? COLS : 1;
                    if (cols == COLS)
                        dot_tile16(wide, blocks, q + (long)c0 * k, k, s + (long)c0 * blocks, sums + (long)c0 * blocks,
                                   COLS, out);
                    else
                        dot_tile16(wide, blocks, q + (long)c0 * k, k, s + (long)c0 * blocks, sums + (long)c0 * blocks,
                                   1, out);
                    for (int c = 0; c < cols; c++)
                        for (int i = 0; i < rows; i++) y[(long)(c0 + c) * n + j + i] = out[c * TILE + i];
                    c0 += cols;
                }
            }
        }
        free(wide);
    }
    return failed ? -1 : 0;
}
