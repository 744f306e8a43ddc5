/* One query per sequence against the paged KV cache of one layer, on CPUs (float32), GQA-aware.
 *
 * q [B, H, D], k/v cache slabs [KVH, S, D] (S = blocks * block_size token slots), block tables [B, W] int32,
 * sequence lengths [B] int32 -> out [B, H, D]. Each (sequence, head) pair is one OpenMP work item: scores
 * over the sequence's slots found through its block table, a softmax, the weighted sum of values. It replaces
 * the gathers, two batched matmuls, mask and softmax PyTorch runs per layer (a dozen dispatches) with one call.
 * `work` holds B * H * W * block_size floats of scores. With `new_slots`, the step's own keys and values
 * (k_new/v_new [B, KVH, D], rows `k_stride`/`v_stride` floats apart) are first written to those slots of the slabs: the
 * two index_copy_ dispatches a decode step would make per layer (a negative slot writes nothing).
 * Built by build.py; no Python headers.
 */
#include <immintrin.h>
#include <math.h>

static inline float dot(const float *a, const float *b, int d) {
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

void decode_attention(const float *q, const float *kc, const float *vc, const int *tables, const int *seq_lens,
                      float *out, int batch, int heads, int kv_heads, int d, int block_size, int width,
                      long slots, float scale, float *work, const float *k_new, const float *v_new,
                      long k_stride, long v_stride, const long *new_slots) {
    int group = heads / kv_heads;
    if (new_slots) {
        float *kw = (float *)kc, *vw = (float *)vc;
        for (int b = 0; b < batch; b++) {
            long slot = new_slots[b];
            if (slot < 0) continue;
            for (int g = 0; g < kv_heads; g++) {
                const float *ks = k_new + b * k_stride + (long)g * d, *vs = v_new + b * v_stride + (long)g * d;
                float *kd = kw + ((long)g * slots + slot) * d, *vd = vw + ((long)g * slots + slot) * d;
                for (int i = 0; i < d; i++) { kd[i] = ks[i]; vd[i] = vs[i]; }
            }
        }
    }
    long span = (long)width * block_size;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int item = 0; item < batch * heads; item++) {
        int b = item / heads, h = item % heads, g = h / group;
        int len = seq_lens[b];
        const float *qh = q + (long)item * d;
        const float *kg = kc + (long)g * slots * d, *vg = vc + (long)g * slots * d;
        const int *table = tables + (long)b * width;
        float *scores = work + (long)item * span;
        float top = -INFINITY;
        for (int t = 0; t < len; t++) {
            long slot = (long)table[t / block_size] * block_size + t % block_size;
            float s = dot(qh, kg + slot * d, d) * scale;
            scores[t] = s;
            top = s > top ? s : top;
        }
        float total = 0.0f;
        for (int t = 0; t < len; t++) {
            scores[t] = expf(scores[t] - top);
            total += scores[t];
        }
        float *o = out + (long)item * d;
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
}
