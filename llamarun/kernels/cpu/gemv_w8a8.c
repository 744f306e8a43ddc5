/* Decode-sized matmuls against int8 weights on x86 CPUs with AVX2: y[m, n] = scale[n] * sum_k w[n, k] x[m, k].
 *
 * Each activation row is first quantized to int8 in blocks of 32 with one float scale per block (as llama.cpp's
 * Q8_0), so the inner loop is integer: 32 products per _mm256_maddubs_epi16, summed in int32 by
 * _mm256_madd_epi16, then scaled by the block's activation scale into eight float lanes. Output rows are split
 * over OpenMP threads. The pieces live in w8a8.h, shared with decode_step.c (the int8 head of a one-call step).
 * Built on first use by llamarun/kernels/cpu/build.py; no Python headers, called by ctypes.
 */
#include "w8a8.h"

/* x [m, k] float32, w [n, k] int8, scale [n] float32, y [m, n] float32; work: m * (k + k / 32 * 4) bytes. */
void gemv_w8a8(const float *x, const int8_t *w, const float *scale, float *y, int m, int n, int k, void *work) {
    int8_t *q = (int8_t *)work;
    float *s = (float *)(q + (long)m * k);
    int blocks = k / BLOCK;
    for (int r = 0; r < m; r++) q8_quantize_row(x + (long)r * k, k, q + (long)r * k, s + (long)r * blocks);
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n / 4; t++) q8_quad(w, scale, q, s, y, m, n, k, t);
    q8_tail(w, scale, q, s, y, m, n, k);
}
