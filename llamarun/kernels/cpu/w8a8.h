/* The W8A8 pieces shared by gemv_w8a8.c (one matmul a call) and decode_step.c (whose last phase is the int8
 * head): the activation quantizer, the row dot products and the rows of a matmul; described in gemv_w8a8.c.
 * Static inline, prefixed q8_ so a file can include this beside w4a8.h; build.py's digest covers the header.
 */
#ifndef LLAMARUN_W8A8_H
#define LLAMARUN_W8A8_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#ifndef BLOCK
#define BLOCK 32
#endif
#ifndef PREFETCH_QUADS  /* -DPREFETCH_QUADS=... to tune */
#define PREFETCH_QUADS 4  /* default model's head (49152 x 576): 0.75 ms against 1.96 ms without (38 / 14 GB/s) */
#endif

/* x [k] float -> q [k] int8 and s [k / 32] float (k a multiple of 32). */
static inline void q8_quantize_row(const float *x, int k, int8_t *q, float *s) {
    for (int b = 0; b < k / BLOCK; b++) {
        const float *xb = x + b * BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < BLOCK; i++) {
            float a = fabsf(xb[i]);
            amax = a > amax ? a : amax;
        }
        float scale = amax / 127.0f;
        float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int i = 0; i < BLOCK; i++) q[b * BLOCK + i] = (int8_t)lrintf(xb[i] * inv);
        s[b] = scale;
    }
}

static inline float q8_hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* One weight row against one quantized activation row. */
static inline float q8_dot_row(const int8_t *w, const int8_t *q, const float *s, int blocks) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        __m256i wv = _mm256_loadu_si256((const __m256i *)(w + b * BLOCK));
        __m256i xv = _mm256_loadu_si256((const __m256i *)(q + b * BLOCK));
        /* maddubs multiplies unsigned by signed bytes: move x's sign onto w and take |x|. */
        __m256i ax = _mm256_sign_epi8(xv, xv);
        __m256i sw = _mm256_sign_epi8(wv, xv);
        __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), ones); /* 8 x int32 */
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(s[b]), acc);
    }
    return q8_hsum(acc);
}

/* Four weight rows against one quantized activation row: |x| and each block's scale are loaded once for four. */
static inline void q8_dot_rows4(const int8_t *w, long stride, const int8_t *q, const float *s, int blocks, float *out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(q + b * BLOCK));
        __m256i ax = _mm256_sign_epi8(xv, xv);
        __m256 xs = _mm256_set1_ps(s[b]);
        const int8_t *wb = w + b * BLOCK;
        /* A thread's quads are one contiguous stream (4 rows of k bytes each), but four rows read side by side
         * look like four streams to the hardware prefetcher, which then fetches too little: ask for the quad
         * PREFETCH_QUADS ahead, two lines per block, which covers exactly its 4k bytes over the k / 32 blocks. */
        const char *ahead = (const char *)(w + PREFETCH_QUADS * 4 * stride) + b * 128;
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
#define ROW(i, acc)                                                                                      \
        {                                                                                                \
            __m256i wv = _mm256_loadu_si256((const __m256i *)(wb + (i) * stride));                      \
            __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv)), ones); \
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), xs, acc);                                   \
        }
        ROW(0, acc0) ROW(1, acc1) ROW(2, acc2) ROW(3, acc3)
#undef ROW
    }
    out[0] = q8_hsum(acc0), out[1] = q8_hsum(acc1), out[2] = q8_hsum(acc2), out[3] = q8_hsum(acc3);
}

/* Rows [4 * t, 4 * t + 4) of y = x w^T for the m quantized activation rows q/s (the last n % 4 rows: q8_tail). */
static inline void q8_quad(const int8_t *w, const float *scale, const int8_t *q, const float *s, float *y, int m,
                           int n, int k, int t) {
    int j = 4 * t, blocks = k / BLOCK;
    float out[4];
    for (int r = 0; r < m; r++) {
        q8_dot_rows4(w + (long)j * k, k, q + (long)r * k, s + (long)r * blocks, blocks, out);
        for (int i = 0; i < 4; i++) y[(long)r * n + j + i] = scale[j + i] * out[i];
    }
}

static inline void q8_tail(const int8_t *w, const float *scale, const int8_t *q, const float *s, float *y, int m,
                           int n, int k) {
    for (int j = 4 * (n / 4); j < n; j++)
        for (int r = 0; r < m; r++)
            y[(long)r * n + j] = scale[j] * q8_dot_row(w + (long)j * k, q + (long)r * k, s + (long)r * (k / BLOCK),
                                                      k / BLOCK);
}

#endif
