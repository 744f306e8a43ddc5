/* exp over eight floats with AVX2/FMA, for the softmax and SwiGLU of a decode step (decode_attention.h,
 * small_ops.h). libm's expf is scalar: a default-model step calls it ~75k times (0.4 ms of SwiGLU alone).
 *
 * exp(x) = 2^n exp(r) with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2]; ln 2 is split in a
 * high part exact in float and a low correction, so r keeps its bits; exp(r) is its Taylor series to r^7,
 * whose error at |r| = 0.35 is below 1e-8 relative, evaluated by Horner's rule in FMAs; 2^n is built in the
 * exponent field. Measured against float64 exp at every float in [-87, 88.37]: under 1 ulp (0.94). Below
 * -87.3 the result is 0 (as expf underflows to, near enough); above 88.37, where 2^n would need n = 128, it is
 * +inf (expf reaches 3.4e38 at 88.72): the callers only take exp of non-positive numbers or feed it to
 * 1 / (1 + e).
 */
#ifndef LLAMARUN_VEC_MATH_H
#define LLAMARUN_VEC_MATH_H
#include <immintrin.h>

static inline __m256 exp8(__m256 x) {
    const __m256 hi_limit = _mm256_set1_ps(88.37f), lo_limit = _mm256_set1_ps(-87.33f);
    __m256 big = _mm256_cmp_ps(x, hi_limit, _CMP_GT_OQ), small = _mm256_cmp_ps(x, lo_limit, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo_limit), hi_limit);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  /* ln 2 high: 8 significant bits */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);      /* ln 2 - 0.693359375 */
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n: n + 127 in the exponent field; after the clamp n is within [-126, 127] */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 out = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    out = _mm256_blendv_ps(out, _mm256_set1_ps(__builtin_inff()), big);
    return _mm256_andnot_ps(small, out);
}

#endif
