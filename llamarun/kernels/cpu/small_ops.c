/* The per-token small ops of a CPU decode step in float32, one call each instead of three to fifteen PyTorch
 * dispatches: RMSNorm with the residual add folded in, rotary embedding of q and k (HF half-split layout), and
 * SwiGLU's silu(gate) * up.
 * Rows are few at decode, so these run on the calling thread; prompts keep PyTorch's ops (see layers/fused.py).
 * Built by build.py; no Python headers.
 */
#include <math.h>

/* total = x + residual (or x when residual is NULL); norm = weight * total / sqrt(mean(total^2) + eps).
 * x, residual, total, norm: [rows, hidden] contiguous; total may alias nothing else. */
void add_rms_norm(const float *x, const float *residual, const float *weight, float *total, float *norm,
                  int rows, int hidden, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (long)r * hidden;
        const float *rr = residual ? residual + (long)r * hidden : 0;
        float *tr = total + (long)r * hidden, *nr = norm + (long)r * hidden;
        float sum = 0.0f;
        for (int i = 0; i < hidden; i++) {
            float v = rr ? xr[i] + rr[i] : xr[i];
            tr[i] = v;
            sum += v * v;
        }
        float inv = 1.0f / sqrtf(sum / hidden + eps);
        for (int i = 0; i < hidden; i++) nr[i] = weight[i] * (tr[i] * inv);
    }
}

/* out[t, h, :] = x * cos + rotate_half(x) * sin for x [tokens, heads, d] read with strides (token, head; the last
 * dim contiguous), cos/sin [tokens, d] contiguous, out [tokens, heads, d] contiguous. */
void rotary(const float *x, long token_stride, long head_stride, const float *cos_, const float *sin_, float *out,
            int tokens, int heads, int d) {
    int half = d / 2;
    for (int t = 0; t < tokens; t++) {
        const float *c = cos_ + (long)t * d, *s = sin_ + (long)t * d;
        for (int h = 0; h < heads; h++) {
            const float *xh = x + t * token_stride + h * head_stride;
            float *o = out + ((long)t * heads + h) * d;
            for (int i = 0; i < half; i++) o[i] = xh[i] * c[i] - xh[i + half] * s[i];
            for (int i = half; i < d; i++) o[i] = xh[i] * c[i] + xh[i - half] * s[i];
        }
    }
}

/* out[r, i] = silu(g) * u with g = gate_up[r, i], u = gate_up[r, inter + i], as torch computes it in float32:
 * silu(g) = g / (1 + exp(-g)). gate_up [rows, 2 * inter] and out [rows, inter] contiguous. */
void silu_mul(const float *gate_up, float *out, int rows, int inter) {
    for (int r = 0; r < rows; r++) {
        const float *g = gate_up + (long)r * 2 * inter, *u = g + inter;
        float *o = out + (long)r * inter;
        for (int i = 0; i < inter; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}
