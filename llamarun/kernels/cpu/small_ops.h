/* One row (or one head) of the small decode ops, shared by small_ops.c (a call per op) and decode_step.c (a
 * whole step a call), so both compute exactly the same float32 arithmetic. Static inline: each library that
 * includes this gets its own copy (build.py's digest covers the header).
 */
#ifndef LLAMARUN_SMALL_OPS_H
#define LLAMARUN_SMALL_OPS_H
#include <math.h>

#include "vec_math.h"

/* tr = x + rr (or x when rr is NULL); nr = weight * tr / sqrt(mean(tr^2) + eps), one row of `hidden`. The sum
 * runs in index order, so both users of this header round alike. */
static inline void add_rms_norm_row(const float *xr, const float *rr, const float *weight, float *tr, float *nr,
                                    int hidden, float eps) {
    float sum = 0.0f;
    for (int i = 0; i < hidden; i++) {
        float v = rr ? xr[i] + rr[i] : xr[i];
        tr[i] = v;
        sum += v * v;
    }
    float inv = 1.0f / sqrtf(sum / hidden + eps);
    for (int i = 0; i < hidden; i++) nr[i] = weight[i] * (tr[i] * inv);
}

/* o = xh * c + rotate_half(xh) * s for one head of d values (HF half-split layout); o must not alias xh. */
static inline void rotary_head(const float *xh, const float *c, const float *s, float *o, int d) {
    int half = d / 2;
    for (int i = 0; i < half; i++) o[i] = xh[i] * c[i] - xh[i + half] * s[i];
    for (int i = half; i < d; i++) o[i] = xh[i] * c[i] + xh[i - half] * s[i];
}

/* o[i] = silu(g[i]) * u[i] for n values, silu(g) = g / (1 + exp(-g)) as torch computes it in float32; eight at
 * a time with exp8 (vec_math.h), the last n % 8 with expf. */
static inline void silu_mul_row(const float *g, const float *u, float *o, int n) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 e = exp8(_mm256_xor_ps(gv, sign));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

#endif
