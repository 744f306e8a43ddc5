/* The per-token small ops of a CPU decode step in float32, one call each instead of three to fifteen PyTorch
 * dispatches: RMSNorm with the residual add folded in, rotary embedding of q and k (HF half-split layout), and
 * SwiGLU's silu(gate) * up. The row arithmetic lives in small_ops.h, shared with decode_step.c.
 * Decode rows are few, so they run on the calling thread; a prompt chunk's rows (more than PARALLEL_ROWS) are
 * split over OpenMP threads (layers/fused.py sends prompt chunks to rotary and silu_mul).
 * Built by build.py; no Python headers.
 */
#include "small_ops.h"

#define PARALLEL_ROWS 16  /* more rows than this: an OpenMP team (a fork/join costs more than a few decode rows) */

/* total = x + residual (or x when residual is NULL); norm = weight * total / sqrt(mean(total^2) + eps).
 * x, residual, total, norm: [rows, hidden] contiguous; total may alias nothing else. */
void add_rms_norm(const float *x, const float *residual, const float *weight, float *total, float *norm,
                  int rows, int hidden, float eps) {
    #pragma omp parallel for schedule(static) if (rows > PARALLEL_ROWS)
    for (int r = 0; r < rows; r++)
        add_rms_norm_row(x + (long)r * hidden, residual ? residual + (long)r * hidden : 0, weight,
                         total + (long)r * hidden, norm + (long)r * hidden, hidden, eps);
}

/* out[t, h, :] = x * cos + rotate_half(x) * sin for x [tokens, heads, d] read with strides (token, head; the last
 * dim contiguous), cos/sin [tokens, d] contiguous, out [tokens, heads, d] contiguous. */
void rotary(const float *x, long token_stride, long head_stride, const float *cos_, const float *sin_, float *out,
            int tokens, int heads, int d) {
    #pragma omp parallel for schedule(static) if (tokens > PARALLEL_ROWS)
    for (int t = 0; t < tokens; t++)
        for (int h = 0; h < heads; h++)
            rotary_head(x + t * token_stride + h * head_stride, cos_ + (long)t * d, sin_ + (long)t * d,
                        out + ((long)t * heads + h) * d, d);
}

/* out[r, i] = silu(g) * u with g = gate_up[r, i], u = gate_up[r, inter + i]. gate_up [rows, 2 * inter] and
 * out [rows, inter] contiguous. */
void silu_mul(const float *gate_up, float *out, int rows, int inter) {
    #pragma omp parallel for schedule(static) if (rows > PARALLEL_ROWS)
    for (int r = 0; r < rows; r++)
        silu_mul_row(gate_up + (long)r * 2 * inter, gate_up + (long)r * 2 * inter + inter, out + (long)r * inter,
                     inter);
}
