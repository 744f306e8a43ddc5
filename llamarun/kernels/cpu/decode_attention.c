/* One query per sequence against the paged KV cache of one layer, on CPUs (float32), GQA-aware.
 *
 * q [B, H, D], k/v cache slabs [KVH, S, D] (S = blocks * block_size token slots), block tables [B, W] int32,
 * sequence lengths [B] int32 -> out [B, H, D]. Each sequence is attended in two halves per KV head, then
 * merged (attend_split_item / attend_merge_item in decode_attention.h, shared with decode_step.c). It replaces
 * the gathers, two batched matmuls, mask and softmax PyTorch runs per layer (a dozen dispatches) with one call.
 * `work` holds B * KVH * 2 * W * block_size floats of scores and B * H * (4 + 2 D) of the halves' results.
 * With `new_slots`, the step's own keys and values (k_new/v_new [B, KVH, D], rows `k_stride`/`v_stride` floats
 * apart) are first written to those slots of the slabs: the two index_copy_ dispatches a decode step would make
 * per layer (a negative slot writes nothing).
 * Built by build.py; no Python headers.
 */
#include "decode_attention.h"

void decode_attention(const float *q, const float *kc, const float *vc, const int *tables, const int *seq_lens,
                      float *out, int batch, int heads, int kv_heads, int d, int block_size, int width,
                      long slots, float scale, float *work, const float *k_new, const float *v_new,
                      long k_stride, long v_stride, const long *new_slots) {
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
    /* work: the split's scores, then each half's (m, l), then its outputs (decode_attention.h) */
    float *scores = work, *part_ml = scores + (long)batch * kv_heads * 2 * width * block_size;
    float *part_o = part_ml + (long)batch * heads * 4;
    #pragma omp parallel
    {
        #pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < batch * kv_heads * 2; item++)
            attend_split_item(item, q, kc, vc, tables, seq_lens, heads, kv_heads, d, block_size, width, slots,
                              scale, scores, part_ml, part_o);
        #pragma omp for schedule(static)
        for (int item = 0; item < batch * heads; item++)
            attend_merge_item(item, part_ml, part_o, d, out + (long)item * d);
    }
}
