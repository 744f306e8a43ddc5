/* Decode-sized matmuls against 4-bit affine weights on x86 CPUs with AVX2: y[m, n] = sum_k w[n, k] x[m, k] with
 * w = q * scale + min per block of 32 inputs, q unsigned 0..15.
 *
 * Weights arrive repacked (llamarun/kernels/cpu/w4a8_layout.py) in tiles of four rows, 96 bytes per tile and
 * 32-input block: each row's 16 bytes of nibbles (byte i: input i in the low nibble, input i + 16 in the high
 * one), then the four rows' float32 scales and mins. The four rows a pass reads are one sequential stream, and
 * so are a thread's consecutive tiles.
 *
 * Activations are quantized per row to 16-bit integers in blocks of 32 with a float scale each (the file keeps
 * its W4A8 name: the integer work is still int8 dot products). int8 blocks (llama.cpp's q4 x q8) erred by
 * about 0.5% of a product and moved the default model's greedy text off exact float32 math early; 16 bits err
 * by about 0.002%, for two int8 dot products a block instead of one (the weight bytes, which bound decode, stay).
 * Each integer is split into two signed bytes, x = 256 hi + lo, so unsigned q times each plane goes through
 * _mm256_maddubs_epi16 without saturating (2 * 15 * 128 < 32767) and 256 dot(q, hi) + dot(q, lo) is exact.
 * The block's scale * sum(x) is kept too, because the weights' minimum multiplies the whole block:
 *   sum_k (q scale_w + min)(a scale_a) = scale_w scale_a sum_k q a + min (scale_a sum_k a).
 * The rest is one FMA per block and pair of rows. Weight and activation rows are taken in small tiles so each
 * load serves several products (see dot_tile in w4a8.h).
 * Output rows are split over OpenMP threads (libgomp, the runtime PyTorch loaded, so its thread count holds).
 * Built on first use by build.py; no Python headers, called through ctypes.
 */
#include "w4a8.h"

/* x [m, k] float32, w [ceil(n / 4), k / 32] tiles (rows past n zero), y [m, n] float32; k a multiple of 32;
 * work: 2 * m * k int8 + 2 * m * (k / 32) floats. */
void gemv_w4a8(const float *x, const tile_q4 *w, float *y, int m, int n, int k, void *work) {
    int blocks = k / BLOCK;
    int8_t *q = (int8_t *)work;
    float *s = (float *)(q + 2L * m * k), *sums = s + (long)m * blocks;
    for (int r = 0; r < m; r++)
        quantize_row(x + (long)r * k, k, q + 2L * r * k, s + (long)r * blocks, sums + (long)r * blocks);
    int tiles = (n + TILE - 1) / TILE;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < tiles; t++) w4a8_tile(w, t, q, s, sums, y, m, n, k);
}
