/* The W4A8 pieces shared by gemv_w4a8.c (one matmul a call) and decode_step.c (a whole decode step a call):
 * the record type, the activation quantizer, the tile dot products and one tile of a matmul. The format and
 * the arithmetic are described in gemv_w4a8.c. Everything here is static inline, so each file that includes
 * it gets its own copy and build.py still compiles one file per library (its digest covers this header).
 */
#ifndef LLAMARUN_W4A8_H
#define LLAMARUN_W4A8_H
#include <immintrin.h>
#include <stdint.h>

#define BLOCK 32
#define TILE 4       /* weight rows a tile: their blocks are stored together */
#ifndef PREFETCH    /* blocks ahead (of a tile, 96 bytes each); -DPREFETCH=... to tune */
#define PREFETCH 32  /* over the default model's 120 int4 matmuls from memory: 10% faster than none, 8 or 16 */
#endif
/* The largest |x|: hi = (x + 128) >> 8 must fit a signed byte, and (32767 + 128) >> 8 = 128 would not;
 * 127 * 256 + 127 is the largest x with hi = 127 (and -x gives hi = -127, lo = -127). */
#define LIMIT 32639

/* One block of 32 inputs of a tile's four rows, as w4a8_layout.py writes it: row r's 16 bytes of nibbles at
 * nibbles[r] (byte i: input i in the low nibble, input i + 16 in the high one), then the four rows' scales and
 * minimums. Rows 0-1 and 2-3 are each one 32-byte load (a "pair"); the scales and minimums of all four are
 * one 16-byte load each. */
typedef struct {
    uint8_t nibbles[TILE][16];
    float scale[TILE], min[TILE];
} tile_q4;  /* 96 bytes */

/* 4 x 8 int32 that fit a byte -> 32 bytes in order: the packs interleave 128-bit lanes, the permute undoes it. */
static inline __m256i pack_bytes(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3)),
                                       order);
}

/* x = 256 hi + lo, hi = round(x / 256) (half up, an arithmetic shift), so lo = x - 256 hi is in [-128, 127]. */
static inline __m256i high_byte(__m256i x) { return _mm256_srai_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(128)), 8); }
static inline __m256i low_byte(__m256i x, __m256i hi) { return _mm256_sub_epi32(x, _mm256_slli_epi32(hi, 8)); }

/* One block of 32 inputs -> its integers within +-LIMIT (i[0..3], eight each, in input order); returns the block's
 * scale max|block| / LIMIT. Shared with the prompt GEMM's int16 rows (gemm_w4a8.c), so a prompt and a decode step
 * quantize alike. */
static inline float block_integers(const float *xb, __m256i i[4]) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16),
           v3 = _mm256_loadu_ps(xb + 24);
    __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float scale = _mm_cvtss_f32(m4) / (float)LIMIT;
    __m256 inv = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
    /* round to nearest even, as lrintf in gemv_w8a8.c */
    i[0] = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv));
    i[1] = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv));
    i[2] = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv));
    i[3] = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
    return scale;
}

/* The exact int32 sum of a block's integers. */
static inline int block_sum(const __m256i i[4]) {
    __m256i total = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
    return _mm_cvtsi128_si32(t4);
}

/* x [k] float -> q [2k] int8: per block of 32, the high bytes then the low bytes of integers within +-LIMIT;
 * s [k / 32] the block scales max|block| / LIMIT; sums [k / 32] = scale * sum(integers), the sum exact (in int32,
 * and in float: |sum| <= 32 * LIMIT < 2^24). |x / scale| passes LIMIT by float rounding only (< 0.01), so the
 * rounded integers stay within it. Vectorized because it runs before the parallel region, on every call's
 * critical path. */
static inline void quantize_row(const float *x, int k, int8_t *q, float *s, float *sums) {
    for (int b = 0; b < k / BLOCK; b++) {
        __m256i i[4];
        float scale = block_integers(x + b * BLOCK, i);
        __m256i h0 = high_byte(i[0]), h1 = high_byte(i[1]), h2 = high_byte(i[2]), h3 = high_byte(i[3]);
        _mm256_storeu_si256((__m256i *)(q + 2 * b * BLOCK), pack_bytes(h0, h1, h2, h3));
        _mm256_storeu_si256((__m256i *)(q + 2 * b * BLOCK + BLOCK),
                            pack_bytes(low_byte(i[0], h0), low_byte(i[1], h1), low_byte(i[2], h2), low_byte(i[3], h3)));
        s[b] = scale;
        sums[b] = scale * (float)block_sum(i);
    }
}

static inline float hsum4(__m128 v) {
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

/* A tile's four rows, two pairs, against C quantized activation rows (2k bytes each, blocks of 32
 * as a high-byte plane then a low-byte plane): out[c * 4 + r]. A pair is one 32-byte load: masking gives
 * both rows' inputs 0-15 (row a in the low 128-bit lane, row b in the high one), shifting then masking their
 * inputs 16-31. Each is multiplied by the matching half of the activation block broadcast to both lanes, and
 * the two halves' 16-bit sums are added before widening (|sum| <= 2 * 2 * 15 * 128, no saturation), so one
 * 8-lane integer vector carries both rows' dots: lanes 0-3 row a, 4-7 row b. One conversion and one FMA then
 * serve two rows, with a scale vector (scale_a x4, scale_b x4) permuted from the tile's four scales times the
 * activation block's scale; the minimums' term takes one 4-wide FMA for the four rows: about 12 instructions
 * per block and row, against 16 with one row a vector (the default model's 120 matmuls: 4.50 -> 4.17 ms). What
 * bounds them now is neither the bytes (float16 scales, a sixth fewer, measured no faster) nor the multiplies
 * (a third of them dropped, no faster): one core streams about 12 GB/s, two about 24. Always inlined with a
 * constant C, so the loops unroll and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void dot_tile(
        const tile_q4 *w, int blocks, const int8_t *q, int k, const float *s, const float *sums, int C, float *out) {
    const __m256i ones = _mm256_set1_epi16(1), high = _mm256_set1_epi16(256), low_mask = _mm256_set1_epi8(0x0F);
    __m256i pick[2] = {_mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)};
    __m256 acc[2][2];
    __m128 mins[2];
    for (int c = 0; c < C; c++) {
        mins[c] = _mm_setzero_ps();
        for (int p = 0; p < 2; p++) acc[c][p] = _mm256_setzero_ps();
    }
    for (int b = 0; b < blocks; b++) {
        const tile_q4 *t = w + b;
        /* A thread's tiles are one sequential stream; asking for it PREFETCH blocks ahead keeps the memory
         * busy across the short matrices of a small model, where the hardware prefetcher ramps up late. */
        const char *ahead = (const char *)(t + PREFETCH);
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
        __m256i first[2], second[2];  /* per pair: inputs 0-15 and 16-31 of both rows, unsigned bytes */
        for (int p = 0; p < 2; p++) {
            __m256i both = _mm256_loadu_si256((const __m256i *)t->nibbles[2 * p]);
            first[p] = _mm256_and_si256(both, low_mask);
            second[p] = _mm256_and_si256(_mm256_srli_epi16(both, 4), low_mask);
        }
        __m128 scales = _mm_loadu_ps(t->scale), mins4 = _mm_loadu_ps(t->min);
        for (int c = 0; c < C; c++) {
            long at = (long)c * (k / BLOCK) + b;
            const int8_t *a = q + 2 * ((long)c * k + b * BLOCK);
            __m256i hi1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)a));
            __m256i hi2 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(a + 16)));
            __m256i lo1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(a + BLOCK)));
            __m256i lo2 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(a + BLOCK + 16)));
            __m128 f = _mm_mul_ps(scales, _mm_set1_ps(s[at]));
            __m256 f2 = _mm256_set_m128(f, f);
            mins[c] = _mm_fmadd_ps(mins4, _mm_set1_ps(sums[at]), mins[c]);
            for (int p = 0; p < 2; p++) {
                __m256i h = _mm256_add_epi16(_mm256_maddubs_epi16(first[p], hi1), _mm256_maddubs_epi16(second[p], hi2));
                __m256i l = _mm256_add_epi16(_mm256_maddubs_epi16(first[p], lo1), _mm256_maddubs_epi16(second[p], lo2));
                /* 256 dot(q, hi) + dot(q, lo): the x 256 rides on the pair-summing multiply; a lane sums 8
                 * products, |lane| <= 8 * 15 * 32639 < 2^22, exact in float */
                __m256i dots = _mm256_add_epi32(_mm256_madd_epi16(h, high), _mm256_madd_epi16(l, ones));
                acc[c][p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_permutevar8x32_ps(f2, pick[p]),
                                            acc[c][p]);
            }
        }
    }
    for (int c = 0; c < C; c++) {
        float m[4];
        _mm_storeu_ps(m, mins[c]);
        for (int p = 0; p < 2; p++) {
            out[c * TILE + 2 * p] = hsum4(_mm256_castps256_ps128(acc[c][p])) + m[2 * p];
            out[c * TILE + 2 * p + 1] = hsum4(_mm256_extractf128_ps(acc[c][p], 1)) + m[2 * p + 1];
        }
    }
}

/* Tile t of y = x w^T: four weight rows (fewer in the last tile: padding rows are computed, not stored) against
 * the m quantized activation rows q/s/sums, two activation rows a pass (eight accumulators would spill).
 * Called from inside a parallel loop over tiles. */
static inline void w4a8_tile(const tile_q4 *w, int t, const int8_t *q, const float *s, const float *sums,
                             float *y, int m, int n, int k) {
    int blocks = k / BLOCK;
    const tile_q4 *wt = w + (long)t * blocks;
    int j = TILE * t, rows = n - j < TILE ? n - j : TILE;
    float out[8];
    for (int c0 = 0; c0 < m; c0 += 2) {
        int cols = m - c0 < 2 ? m - c0 : 2;
        if (cols == 1)
            dot_tile(wt, blocks, q + 2L * c0 * k, k, s + (long)c0 * blocks, sums + (long)c0 * blocks, 1, out);
        else
            dot_tile(wt, blocks, q + 2L * c0 * k, k, s + (long)c0 * blocks, sums + (long)c0 * blocks, 2, out);
        for (int c = 0; c < cols; c++)
            for (int i = 0; i < rows; i++) y[(long)(c0 + c) * n + j + i] = out[c * TILE + i];
    }
}

#endif
