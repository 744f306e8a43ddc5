/* Decode attention over the paged cache (float32, one query per sequence), shared by decode_attention.c (a call
 * per layer) and decode_step.c (a whole step a call) so both round alike: a query head over a range of tokens
 * (attend_part), two ranges merged (attend_merge), and the split work items both paths run
 * (attend_split_item, attend_merge_item). Static inline; build.py's digest covers the header.
 */
#ifndef LLAMARUN_DECODE_ATTENTION_H
#define LLAMARUN_DECODE_ATTENTION_H
#include <immintrin.h>
#include <math.h>

#include "vec_math.h"

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

/* Eight keys' scores at once (d a multiple of 8): eight independent accumulators keep each FMA's latency off
 * the critical path (one key's chain alone is d / 8 dependent FMAs); a transposing reduction puts key j's
 * sum in lane j. */
static inline __m256 attention_dot8(const float *q, const float *k, int d) {
    __m256 a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
    for (int i = 0; i < d; i += 8) {
        __m256 qv = _mm256_loadu_ps(q + i);
        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + (long)j * d + i), a[j]);
    }
    /* per 128-bit half: (key 0..3 partial sums), (key 4..7 partial sums); then the halves added */
    __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* scores[t] = exp(scores[t] - top) in place for t < len; returns their sum (decode and prompt attention). */
static inline float exp_shifted(float *scores, int len, float top) {
    __m256 sum = _mm256_setzero_ps(), topv = _mm256_set1_ps(top);
    int t = 0;
    for (; t + 8 <= len; t += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), topv));
        _mm256_storeu_ps(scores + t, e);
        sum = _mm256_add_ps(sum, e);
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    float total = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
    for (; t < len; t++) {
        scores[t] = expf(scores[t] - top);
        total += scores[t];
    }
    return total;
}

/* One query head over the tokens [t0, t1) of a sequence (t0 a multiple of block_size), found through its block
 * table; kg/vg are its KV head's slab [slots, d]; scores holds t1 - t0 floats. Returns in *m the largest
 * scaled score and in *l the sum of exp(score - m), with o [d] = sum of exp(score - m) v, not yet divided by
 * l: parts of one sequence combine by their maxima (attend_merge), and a whole sequence is o / l. An empty
 * range gives m = -inf, l = 0, o = 0. Walked block by block (no division per token). With d a multiple of 16
 * and blocks of a multiple of 8 tokens: eight keys a pass, the scale and running maximum in vectors, exp eight
 * scores a vector, and the output kept in registers 64 dims at a time; any other shape takes plain loops. */
static inline void attend_part(const float *qh, const float *kg, const float *vg, const int *table, int t0, int t1,
                               int block_size, int d, float scale, float *scores, float *m, float *l, float *o) {
    int fast = d % 16 == 0 && block_size % 8 == 0, len = t1 - t0;
    __m256 top8 = _mm256_set1_ps(-INFINITY);
    for (int at = t0; at < t1; at += block_size) {
        const float *kb = kg + (long)table[at / block_size] * block_size * d;
        int n = t1 - at < block_size ? t1 - at : block_size, j = 0;
        float *sb = scores + (at - t0);
        if (fast)
            for (; j + 8 <= n; j += 8) {
                __m256 sc = _mm256_mul_ps(attention_dot8(qh, kb + (long)j * d, d), _mm256_set1_ps(scale));
                _mm256_storeu_ps(sb + j, sc);
                top8 = _mm256_max_ps(top8, sc);
            }
        for (; j < n; j++) {  /* a block's tail, or every key when the shape is not the vector one */
            sb[j] = attention_dot(qh, kb + (long)j * d, d) * scale;
            top8 = _mm256_max_ps(top8, _mm256_set1_ps(sb[j]));
        }
    }
    float top = hmax8(top8);
    *m = top, *l = len > 0 ? exp_shifted(scores, len, top) : 0.0f;
    if (!fast) {
        for (int i = 0; i < d; i++) o[i] = 0.0f;
        for (int at = t0; at < t1; at += block_size) {
            const float *vb = vg + (long)table[at / block_size] * block_size * d;
            int n = t1 - at < block_size ? t1 - at : block_size;
            for (int j = 0; j < n; j++)
                for (int i = 0; i < d; i++) o[i] += scores[at - t0 + j] * vb[(long)j * d + i];
        }
        return;
    }
    for (int i0 = 0; i0 < d;) {
        int lanes = d - i0 >= 64 ? 8 : 2;  /* 64 dims (8 vectors) a pass, else 16 */
        __m256 acc[8];
        for (int i = 0; i < lanes; i++) acc[i] = _mm256_setzero_ps();
        for (int at = t0; at < t1; at += block_size) {
            const float *vb = vg + (long)table[at / block_size] * block_size * d + i0;
            int n = t1 - at < block_size ? t1 - at : block_size;
            for (int j = 0; j < n; j++) {
                __m256 p = _mm256_broadcast_ss(scores + (at - t0) + j);
                const float *v = vb + (long)j * d;
                if (lanes == 8)
                    for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * i), acc[i]);
                else
                    for (int i = 0; i < 2; i++) acc[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8 * i), acc[i]);
            }
        }
        for (int i = 0; i < lanes; i++) _mm256_storeu_ps(o + i0 + 8 * i, acc[i]);
        i0 += 8 * lanes;
    }
}

/* out [d] = the softmax-weighted sum of two parts from attend_part (m, l, o each), rescaled to the larger
 * maximum: the split-sequence form of attention, exact up to rounding. At least one part is not empty. */
static inline void attend_merge(float m0, float l0, const float *o0, float m1, float l1, const float *o1, int d,
                                float *out) {
    float top = m0 > m1 ? m0 : m1;
    float w0 = l0 > 0.0f ? expf(m0 - top) : 0.0f, w1 = l1 > 0.0f ? expf(m1 - top) : 0.0f;
    float total = l0 * w0 + l1 * w1, inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (int i = 0; i < d; i++) out[i] = (o0[i] * w0 + o1[i] * w1) * inv;
}

/* Decode attention as both CPU paths run it (decode_attention.c per layer, decode_step.c per step), so they
 * round alike: each sequence's blocks split in two halves, an item per (sequence, KV head, half) that runs the
 * group's query heads one after another (the group's keys and values come from memory once; the other heads
 * find them in this core's cache), then an item per (sequence, query head) merging the halves. Two threads
 * thus get equal shares of a batch-1 step's few KV heads.
 *
 * Item `item` of the first loop (0 <= item < batch * kv_heads * 2): q [batch, heads, d] rotated queries; kc/vc
 * one layer's slabs [kv_heads, slots, d]; tables [batch, width]; scores: span = width * block_size floats per
 * item; part_ml [batch * heads * 4] and part_o [batch * heads * 2 * d] receive each half's (m, l) and output. */
static inline void attend_split_item(int item, const float *q, const float *kc, const float *vc, const int *tables,
                                     const int *seq_lens, int heads, int kv_heads, int d, int block_size, int width,
                                     long slots, float scale, float *scores, float *part_ml, float *part_o) {
    int b = item / (kv_heads * 2), g = item / 2 % kv_heads, half = item % 2, group = heads / kv_heads;
    int len = seq_lens[b], mid = ((len + block_size - 1) / block_size + 1) / 2 * block_size;
    mid = mid < len ? mid : len;
    for (int h = g * group; h < (g + 1) * group; h++) {
        long part = ((long)b * heads + h) * 2 + half;
        attend_part(q + ((long)b * heads + h) * d, kc + (long)g * slots * d, vc + (long)g * slots * d,
                    tables + (long)b * width, half ? mid : 0, half ? len : mid, block_size, d, scale,
                    scores + (long)item * width * block_size, part_ml + 2 * part, part_ml + 2 * part + 1,
                    part_o + part * d);
    }
}

/* Item `item` of the second loop (0 <= item < batch * heads): out [d] for that (sequence, head). */
static inline void attend_merge_item(int item, const float *part_ml, const float *part_o, int d, float *out) {
    const float *ml = part_ml + 4L * item, *po = part_o + 2L * item * d;
    attend_merge(ml[0], ml[1], po, ml[2], ml[3], po + d, d, out);
}

#endif
