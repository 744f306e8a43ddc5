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
#define TILE 4       /* weight rows interleaved block by block in the records */
#ifndef PREFETCH    /* blocks ahead (of TILE records, 96 bytes each); -DPREFETCH=... to tune */
#define PREFETCH 32  /* over the default model's 120 int4 matmuls from memory: 10% faster than none, 8 or 16 */
#endif
/* The largest |x|: hi = (x + 128) >> 8 must fit a signed byte, and (32767 + 128) >> 8 = 128 would not;
 * 127 * 256 + 127 is the largest x with hi = 127 (and -x gives hi = -127, lo = -127). */
#define LIMIT 32639

typedef struct {
    uint8_t nibbles[16];
    float scale, min;
} block_q4;  /* 24 bytes, as w4a8_layout.py writes them */

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* 4 x 8 int32 that fit a byte -> 32 bytes in order: the packs interleave 128-bit lanes, the permute undoes it. */
static inline __m256i pack_bytes(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3)),
                                       order);
}

/* x = 256 hi + lo, hi = round(x / 256) (half up, an arithmetic shift), so lo = x - 256 hi is in [-128, 127]. */
static inline __m256i high_byte(__m256i x) { return _mm256_srai_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(128)), 8); }
static inline __m256i low_byte(__m256i x, __m256i hi) { return _mm256_sub_epi32(x, _mm256_slli_epi32(hi, 8)); }

/* x [k] float -> q [2k] int8: per block of 32, the high bytes then the low bytes of integers within +-LIMIT;
 * s [k / 32] the block scales max|block| / LIMIT; sums [k / 32] = scale * sum(integers), the sum exact (in int32,
 * and in float: |sum| <= 32 * LIMIT < 2^24). |x / scale| passes LIMIT by float rounding only (< 0.01), so the
 * rounded integers stay within it. Vectorized because it runs before the parallel region, on every call's
 * critical path. */
static inline void quantize_row(const float *x, int k, int8_t *q, float *s, float *sums) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
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
        /* round to nearest even, as lrintf in gemv_w8a8.c */
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv)),
                i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
        __m256i h0 = high_byte(i0), h1 = high_byte(i1), h2 = high_byte(i2), h3 = high_byte(i3);
        _mm256_storeu_si256((__m256i *)(q + 2 * b * BLOCK), pack_bytes(h0, h1, h2, h3));
        _mm256_storeu_si256((__m256i *)(q + 2 * b * BLOCK + BLOCK),
                            pack_bytes(low_byte(i0, h0), low_byte(i1, h1), low_byte(i2, h2), low_byte(i3, h3)));
        __m256i total = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
        s[b] = scale;
        sums[b] = scale * (float)_mm_cvtsi128_si32(t4);
    }
}

/* The 32 weights of a block as unsigned bytes in input order: the 16 bytes go to both halves in one load,
 * the upper half shifted down by a nibble (a per-lane shift, no shuffle), then both masked. */
static inline __m256i unpack(const block_q4 *blk, __m256i shifts, __m256i low_mask) {
    __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)blk->nibbles));
    return _mm256_and_si256(_mm256_srlv_epi64(both, shifts), low_mask);
}

/* R rows of a tile (from row `w`, records interleaved by four: row r's block b is w[4 * b + r]) against C
 * quantized activation rows (2k bytes each): out[c * R + r]. Each weight block is unpacked once for the C
 * activation rows and each activation block loaded once for the R weight rows. Always inlined with constant
 * R and C, so the loops unroll and the R * C accumulators stay in registers. */
static inline __attribute__((always_inline)) void dot_tile(
        const block_q4 *w, int blocks, int R, const int8_t *q, int k, const float *s, const float *sums, int C,
        float *out) {
    const __m256i ones = _mm256_set1_epi16(1), high = _mm256_set1_epi16(256), low_mask = _mm256_set1_epi8(0x0F);
    const __m256i shifts = _mm256_setr_epi64x(0, 0, 4, 4);
    __m256 acc[4][4];
    float mins[4][4];
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++) acc[c][r] = _mm256_setzero_ps(), mins[c][r] = 0.0f;
    for (int b = 0; b < blocks; b++) {
        /* A thread's tiles are one sequential stream; asking for it PREFETCH blocks ahead keeps the memory
         * busy across the short matrices of a small model, where the hardware prefetcher ramps up late. */
        const char *ahead = (const char *)(w + TILE * (b + PREFETCH));
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
        __m256i hi[4], lo[4];
        for (int c = 0; c < C; c++) {
            const int8_t *at = q + 2 * ((long)c * k + b * BLOCK);
            hi[c] = _mm256_loadu_si256((const __m256i *)at);
            lo[c] = _mm256_loadu_si256((const __m256i *)(at + BLOCK));
        }
        for (int r = 0; r < R; r++) {
            const block_q4 *blk = w + TILE * b + r;
            __m256i wv = unpack(blk, shifts, low_mask);
            for (int c = 0; c < C; c++) {
                long at = (long)c * (k / BLOCK) + b;
                /* 256 dot(q, hi) + dot(q, lo): the x 256 rides on the pair-summing multiply; |dot| < 2^21 */
                __m256i dots = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(wv, hi[c]), high),
                                                _mm256_madd_epi16(_mm256_maddubs_epi16(wv, lo[c]), ones));
                acc[c][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_set1_ps(blk->scale * s[at]), acc[c][r]);
                mins[c][r] += blk->min * sums[at];
            }
        }
    }
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++) out[c * R + r] = hsum(acc[c][r]) + mins[c][r];
}

typedef void (*tile_fn)(const block_q4 *, int, const int8_t *, int, const float *, const float *, float *);

#define PART(R, C)                                                                                          \
    static inline void part_##R##x##C(const block_q4 *w, int blocks, const int8_t *q, int k, const float *s,        \
                               const float *sums, float *out) {                                              \
        dot_tile(w, blocks, R, q, k, s, sums, C, out);                                                       \
    }
/* One activation row (decode of one sequence): a whole tile of four weight rows a pass. Several activation
 * rows (a decode batch): half a tile against up to four activation rows, eight accumulators. */
PART(4, 1) PART(2, 1) PART(2, 2) PART(2, 3) PART(2, 4)
#undef PART
static const tile_fn halves[5] = {0, part_2x1, part_2x2, part_2x3, part_2x4};  /* by activation rows */

/* Tile t of y = x w^T: four weight rows (fewer in the last tile: padding rows are computed, not stored) against
 * the m quantized activation rows q/s/sums. Called from inside a parallel loop over tiles. */
static inline void w4a8_tile(const block_q4 *w, int t, const int8_t *q, const float *s, const float *sums,
                             float *y, int m, int n, int k) {
    int blocks = k / BLOCK;
    const block_q4 *wt = w + (long)t * blocks * TILE;
    int j = TILE * t, rows = n - j < TILE ? n - j : TILE;
    float out[16];
    if (m == 1) {
        part_4x1(wt, blocks, q, k, s, sums, out);
        for (int i = 0; i < rows; i++) y[j + i] = out[i];
        return;
    }
    for (int half = 0; half < TILE; half += 2)
        for (int c0 = 0; c0 < m; c0 += 4) {
            int cols = m - c0 < 4 ? m - c0 : 4;
            halves[cols](wt + half, blocks, q + 2L * c0 * k, k, s + (long)c0 * blocks, sums + (long)c0 * blocks, out);
            for (int c = 0; c < cols; c++)
                for (int i = 0; i < 2 && half + i < rows; i++) y[(long)(c0 + c) * n + j + half + i] = out[c * 2 + i];
        }
}

#endif
