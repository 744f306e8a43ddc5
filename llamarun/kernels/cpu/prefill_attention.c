/* Causal attention of one prompt chunk over the paged cache of one layer, on CPUs (float32), GQA-aware.
 *
 * q [n, H, D] contiguous holds the last n of the sequence's ctx tokens; k/v slabs [KVH, S, D] already hold all
 * ctx keys and values; the sequence's block table [W] int32 finds them. Row i attends to tokens [0, ctx - n + i].
 * Each (row, KV head) runs the group's query heads together (attend_group: the decode kernel's arithmetic, eight
 * keys a pass and exp eight scores a vector, with each key and value read once for the group), straight from the
 * slabs, so there is no gather of the context and no mask; other shapes run attend_part (decode_attention.h) a
 * head at a time. Rows differ in length, so threads take items dynamically.
 * Built by build.py; no Python headers.
 */
#include <stdlib.h>

#include "decode_attention.h"

#define MAX_GROUP 8  /* query heads a KV head serves, at most, on the grouped path */

/* The query heads of one KV head for one row, together, over tokens [0, len): attend_part's arithmetic with the
 * loops turned, so each block of eight keys and each value row is read from memory once for the whole group, not
 * once per head (the context's keys and values outgrow L1 at a few hundred tokens). q: G queries d apart;
 * scores: G rows of `stride` floats; out: G outputs d apart, normalized. d a multiple of 32, blocks of a
 * multiple of 8 tokens. */
static void attend_group(const float *q, int G, const float *kg, const float *vg, const int *table, int len,
                         int block_size, int d, float scale, float *scores, long stride, float *out) {
    __m256 top[MAX_GROUP];
    float total[MAX_GROUP];
    for (int h = 0; h < G; h++) top[h] = _mm256_set1_ps(-INFINITY);
    const __m256 sv = _mm256_set1_ps(scale);
    for (int at = 0; at < len; at += block_size) {
        const float *kb = kg + (long)table[at / block_size] * block_size * d;
        int n = len - at < block_size ? len - at : block_size, j = 0;
        for (; j + 8 <= n; j += 8)
            for (int h = 0; h < G; h++) {
                __m256 sc = _mm256_mul_ps(attention_dot8(q + (long)h * d, kb + (long)j * d, d), sv);
                _mm256_storeu_ps(scores + h * stride + at + j, sc);
                top[h] = _mm256_max_ps(top[h], sc);
            }
        for (; j < n; j++)
            for (int h = 0; h < G; h++) {
                float sc = attention_dot(q + (long)h * d, kb + (long)j * d, d) * scale;
                scores[h * stride + at + j] = sc;
                top[h] = _mm256_max_ps(top[h], _mm256_set1_ps(sc));
            }
    }
    for (int h = 0; h < G; h++) {  /* scores -> exp(score - max), and their sum */
        total[h] = exp_shifted(scores + h * stride, len, hmax8(top[h]));
    }
    for (int i0 = 0; i0 < d; i0 += 32) {  /* 32 dims a pass: four value vectors against the group's weights */
        __m256 acc[MAX_GROUP][4];
        for (int h = 0; h < G; h++)
            for (int c = 0; c < 4; c++) acc[h][c] = _mm256_setzero_ps();
        for (int at = 0; at < len; at += block_size) {
            const float *vb = vg + (long)table[at / block_size] * block_size * d + i0;
            int n = len - at < block_size ? len - at : block_size;
            for (int j = 0; j < n; j++) {
                const float *v = vb + (long)j * d;
                __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
                       v3 = _mm256_loadu_ps(v + 24);
                for (int h = 0; h < G; h++) {
                    __m256 p = _mm256_broadcast_ss(scores + h * stride + at + j);
                    acc[h][0] = _mm256_fmadd_ps(p, v0, acc[h][0]);
                    acc[h][1] = _mm256_fmadd_ps(p, v1, acc[h][1]);
                    acc[h][2] = _mm256_fmadd_ps(p, v2, acc[h][2]);
                    acc[h][3] = _mm256_fmadd_ps(p, v3, acc[h][3]);
                }
            }
        }
        for (int h = 0; h < G; h++) {
            __m256 inv = _mm256_set1_ps(1.0f / total[h]);  /* >= 1: the largest score's own term */
            for (int c = 0; c < 4; c++) _mm256_storeu_ps(out + (long)h * d + i0 + 8 * c, _mm256_mul_ps(acc[h][c], inv));
        }
    }
}

/* Returns 0, or -1 when a thread's scores could not be allocated (out unset). */
int prefill_attention(const float *q, const float *kc, const float *vc, const int *table, float *out, int n, int ctx,
                      int heads, int kv_heads, int d, int block_size, long slots, float scale) {
    int group = heads / kv_heads, failed = 0;
    #pragma omp parallel
    {
        long stride = ctx + 8;
        float *scores = malloc(sizeof(float) * stride * (group < MAX_GROUP ? group : MAX_GROUP)), m, l;
        int grouped = group <= MAX_GROUP && d % 32 == 0 && block_size % 8 == 0;
        if (!scores) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        if (!failed) {
            #pragma omp for schedule(dynamic, 4)
            for (int item = 0; item < n * kv_heads; item++) {
                int i = item / kv_heads, g = item % kv_heads, len = ctx - n + i + 1;
                if (grouped) {
                    long at = (long)i * heads + (long)g * group;
                    attend_group(q + at * d, group, kc + (long)g * slots * d, vc + (long)g * slots * d, table, len,
                                 block_size, d, scale, scores, stride, out + at * d);
                    continue;
                }
                for (int h = g * group; h < (g + 1) * group; h++) {
                    float *o = out + ((long)i * heads + h) * d;
                    attend_part(q + ((long)i * heads + h) * d, kc + (long)g * slots * d, vc + (long)g * slots * d,
                                table, 0, len, block_size, d, scale, scores, &m, &l, o);
                    float inv = 1.0f / l;  /* l >= 1: the largest score's own term */
                    for (int x = 0; x < d; x++) o[x] *= inv;
                }
            }
        }
        free(scores);
    }
    return failed ? -1 : 0;
}
