/* One (sequence, query head) of decode attention over the paged cache, shared by decode_attention.c (a call
 * per layer) and decode_step.c (a whole step a call). Static inline; build.py's digest covers the header.
 */
#ifndef LLAMARUN_DECODE_ATTENTION_H
#define LLAMARUN_DECODE_ATTENTION_H
#include <immintrin.h>
#include <math.h>

#include "vec_math.h"

static inline float attention_dot(const float *a, const float *b, int d) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    float s = _mm_cvtss_f32(lo);
    for (; i < d; i++) s += a[i] * b[i];
    return s;
}

/* Four tokens' scores at once (d a multiple of 16): independent accumulators keep the FMA latency of one
 * token's chain off the critical path. */
static inline void attention_dot4(const float *q, const float *k0, const float *k1, const float *k2, const float *k3,
                                  int d, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int i = 0; i < d; i += 8) {
        __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
    }
    /* transpose-and-add: lane j of the result is token j's sum */
    __m256 s01 = _mm256_hadd_ps(a0, a1), s23 = _mm256_hadd_ps(a2, a3);
    __m256 s = _mm256_hadd_ps(s01, s23);  /* per 128-bit half: (t0, t1, t2, t3) partial sums */
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

/* o [d] = softmax(scale * K qh) V over the `len` tokens of one sequence, found through its block table; kg/vg
 * are its KV head's slab [slots, d]; scores holds `len` floats.
 * Walked block by block (no division per token). With d a multiple of 16: four keys a pass, exp eight scores a
 * vector, and the output kept in registers 64 dims at a time; any other d takes the plain loops. */
static inline void attend_head(const float *qh, const float *kg, const float *vg, const int *table, int len,
                               int block_size, int d, float scale, float *scores, float *o) {
    float top = -INFINITY;
    int fast = d % 16 == 0;
    for (int t0 = 0, b = 0; t0 < len; t0 += block_size, b++) {
        const float *kb = kg + (long)table[b] * block_size * d;
        int n = len - t0 < block_size ? len - t0 : block_size, j = 0;
        if (fast)
            for (; j + 4 <= n; j += 4)
                attention_dot4(qh, kb + (long)j * d, kb + (long)(j + 1) * d, kb + (long)(j + 2) * d,
                               kb + (long)(j + 3) * d, d, scores + t0 + j);
        for (; j < n; j++) scores[t0 + j] = attention_dot(qh, kb + (long)j * d, d);
    }
    for (int t = 0; t < len; t++) {
        scores[t] *= scale;
        top = scores[t] > top ? scores[t] : top;
    }
    float total = 0.0f;
    int t = 0;
    if (fast) {
        __m256 sum = _mm256_setzero_ps(), topv = _mm256_set1_ps(top);
        for (; t + 8 <= len; t += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), topv));
            _mm256_storeu_ps(scores + t, e);
            sum = _mm256_add_ps(sum, e);
        }
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        total = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    }
    for (; t < len; t++) {
        scores[t] = expf(scores[t] - top);
        total += scores[t];
    }
    float inv = total > 0.0f ? 1.0f / total : 0.0f;
    if (fast) {
        for (int i0 = 0; i0 < d;) {
            int lanes = d - i0 >= 64 ? 8 : 2;  /* 64 dims (8 vectors) a pass, else 16 */
            __m256 acc[8];
            for (int i = 0; i < lanes; i++) acc[i] = _mm256_setzero_ps();
            for (int t0 = 0, b = 0; t0 < len; t0 += block_size, b++) {
                const float *vb = vg + (long)table[b] * block_size * d + i0;
                int n = len - t0 < block_size ? len - t0 : block_size;
                for (int j = 0; j < n; j++) {
                    __m256 p = _mm256_set1_ps(scores[t0 + j] * inv);
                    const float *v = vb + (long)j * d;
                    if (lanes == 8)
                        for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * i), acc[i]);
                    else
                        for (int i = 0; i < 2; i++) acc[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * i), acc[i]);
                }
            }
            for (int i = 0; i < lanes; i++) _mm256_storeu_ps(o + i0 + 8 * i, acc[i]);
            i0 += 8 * lanes;
        }
        return;
    }
    for (int i = 0; i < d; i++) o[i] = 0.0f;
    for (int t0 = 0, b = 0; t0 < len; t0 += block_size, b++) {
        const float *vb = vg + (long)table[b] * block_size * d;
        int n = len - t0 < block_size ? len - t0 : block_size;
        for (int j = 0; j < n; j++)
            for (int i = 0; i < d; i++) o[i] += scores[t0 + j] * inv * vb[(long)j * d + i];
    }
}

#endif
