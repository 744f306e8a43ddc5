/* One (sequence, query head) of decode attention over the paged cache, shared by decode_attention.c (a call
 * per layer) and decode_step.c (a whole step a call). Static inline; build.py's digest covers the header.
 */
#ifndef LLAMARUN_DECODE_ATTENTION_H
#define LLAMARUN_DECODE_ATTENTION_H
#include <immintrin.h>
#include <math.h>

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

/* o [d] = softmax(scale * K qh) V over the `len` tokens of one sequence, found through its block table; kg/vg
 * are its KV head's slab [slots, d]; scores holds `len` floats. */
static inline void attend_head(const float *qh, const float *kg, const float *vg, const int *table, int len,
                               int block_size, int d, float scale, float *scores, float *o) {
    float top = -INFINITY;
    for (int t = 0; t < len; t++) {
        long slot = (long)table[t / block_size] * block_size + t % block_size;
        float s = attention_dot(qh, kg + slot * d, d) * scale;
        scores[t] = s;
        top = s > top ? s : top;
    }
    float total = 0.0f;
    for (int t = 0; t < len; t++) {
        scores[t] = expf(scores[t] - top);
        total += scores[t];
    }
    for (int i = 0; i < d; i++) o[i] = 0.0f;
    float inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (int t = 0; t < len; t++) {
        long slot = (long)table[t / block_size] * block_size + t % block_size;
        const float *v = vg + slot * d;
        __m256 p = _mm256_set1_ps(scores[t] * inv);
        int i = 0;
        for (; i + 8 <= d; i += 8)
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(p, _mm256_loadu_ps(v + i), _mm256_loadu_ps(o + i)));
        for (; i < d; i++) o[i] += scores[t] * inv * v[i];
    }
}

#endif
