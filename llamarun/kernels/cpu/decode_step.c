/* A whole all-decode step of a Llama decoder on CPUs in one call: every layer, 1..8 rows, float32, weights as
 * w4a8 records (w4a8_layout.py), keys and values in the paged cache's float32 slabs.
 *
 * Called once per step instead of ~300 times: the per-op path pays a ctypes call, a few tensor allocations and
 * an OpenMP fork/join for every matmul, norm and attention of every layer, and that Python and dispatch work
 * was a third of the default model's step. Here one parallel region runs all layers; the phases of a layer are
 * `omp for` loops whose implied barriers order them (two to a few threads: a barrier costs well under a
 * microsecond while threads spin, and a team of one has none). Per layer:
 *   A  resid += x; h = RMSNorm(resid); h quantized once as the qkv input        (rows)
 *   B  qkv = h Wqkv                                                              (tiles of 4 output rows)
 *   C  k rotated and k, v stored in the slot of each row's new token           (rows x kv heads)
 *   D  q rotated, attention over each half of the paged cache's blocks          (rows x KV heads x 2)
 *   D' the halves merged, each head's output quantized                          (rows x heads)
 *   E  x = attn Wo                                                               (tiles)
 *   F  resid += x; h = RMSNorm(resid); quantized as the gate/up input            (rows)
 *   G  gate_up = h Wgu, then silu(gate) * up quantized as the down input      (blocks of 32 of the
 *      intermediate: each thread finishes the activations of the rows it computed)
 *   I  x = act Wd                                                                (tiles)
 * and after the last layer the final norm and, for an int8 head, the logits. The embeddings and rotary rows
 * are looked up here too, from the token ids and positions, so a step's Python is this call and the sampler. The
 * arithmetic is the per-op kernels' own (w4a8.h, w8a8.h, small_ops.h, decode_attention.h), so the two paths
 * agree bit for bit given the same cos/sin. Nothing is allocated: the caller passes a workspace of
 * decode_step_work() floats. Index values (token ids, lengths, slots, block ids) are checked before any is used,
 * so a bad step is refused with an error code instead of reading or writing outside the table or the cache.
 * Built by build.py; no Python headers, called through ctypes (engine/cpu_decode.py).
 */
#include <stdint.h>
#include <string.h>

#include "decode_attention.h"
#include "small_ops.h"
#include "w4a8.h"
#include "w8a8.h"

/* dims[]: the model's shape and the cache's */
enum { D_LAYERS, D_HIDDEN, D_HEADS, D_KV_HEADS, D_HEAD_DIM, D_INTER, D_BLOCK_SIZE, D_SLOTS, D_COUNT };
/* per layer, pointers: the four matmuls' records, the two norm weights, the K and V slabs [kv_heads, slots, d] */
enum { L_QKV, L_O, L_GATE_UP, L_DOWN, L_IN_NORM, L_POST_NORM, L_K, L_V, L_COUNT };

#define MAX_ROWS 8
#define MAX_HEAD_DIM 256

typedef struct {
    float *resid, *x, *h, *qkv, *attn, *gate_up, *act, *s, *sums, *scores, *s2, *sums2, *part_ml, *part_o;
    float *embedded, *cos, *sin;  /* the step's inputs: embeddings [rows, hidden], rotary [rows, head_dim] */
    float *q_rot;                 /* rotated queries [rows, heads, head_dim] */
    float *head_s;                /* the int8 head's activation scales [rows, hidden / 32] */
    int8_t *head_q;               /* and its quantized activations [rows, hidden] */
    int8_t *q, *q2;  /* quantized matmul inputs; q2 for down's, written while other items still read q */
} workspace;

static long max3(long a, long b, long c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* Carve the workspace (or, with base NULL, count its floats). The quantized activations are sized for the
 * widest matmul input: hidden (qkv, gate/up), heads * d (o) or the intermediate size (down). */
static long carve(const long *dims, int rows, int width, float *base, workspace *w) {
    long hidden = dims[D_HIDDEN], qd = dims[D_HEADS] * dims[D_HEAD_DIM], kd = dims[D_KV_HEADS] * dims[D_HEAD_DIM];
    long inter = dims[D_INTER], widest = max3(hidden, qd, inter), d = dims[D_HEAD_DIM];
    float *q = 0, *q2 = 0, *head_q = 0;  /* the int8 buffers, carved as floats */
    struct { float **at; long floats; } parts[] = {
        {&w->embedded, rows * hidden}, {&w->cos, rows * d}, {&w->sin, rows * d},
        {&w->resid, rows * hidden}, {&w->x, rows * hidden}, {&w->h, rows * hidden},
        {&w->qkv, rows * (qd + 2 * kd)}, {&w->q_rot, rows * qd}, {&w->attn, rows * qd},
        {&w->scores, (long)rows * dims[D_KV_HEADS] * 2 * width * dims[D_BLOCK_SIZE]},
        {&w->part_ml, rows * dims[D_HEADS] * 4}, {&w->part_o, rows * qd * 2},
        {&w->gate_up, rows * 2 * inter}, {&w->act, rows * inter},
        {&q, (2 * rows * widest + 3) / 4}, {&w->s, rows * widest / BLOCK}, {&w->sums, rows * widest / BLOCK},
        {&q2, (2 * rows * inter + 3) / 4}, {&w->s2, rows * inter / BLOCK}, {&w->sums2, rows * inter / BLOCK},
        {&head_q, (rows * hidden + 3) / 4}, {&w->head_s, rows * hidden / BLOCK},
    };
    long at = 0;
    for (unsigned i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (base) *parts[i].at = base + at;
        at += (parts[i].floats + 15) & ~15L;  /* 64-byte steps keep every buffer's vectors aligned alike */
    }
    w->q = (int8_t *)q, w->q2 = (int8_t *)q2, w->head_q = (int8_t *)head_q;
    return at;
}

static int shape_ok(const long *dims, int rows) {
    long d = dims[D_HEAD_DIM];
    return rows >= 1 && rows <= MAX_ROWS && dims[D_LAYERS] >= 1 && d >= BLOCK && d <= MAX_HEAD_DIM && d % BLOCK == 0
           && dims[D_HEADS] >= 1 && dims[D_KV_HEADS] >= 1 && dims[D_HEADS] % dims[D_KV_HEADS] == 0
           && dims[D_HIDDEN] > 0 && dims[D_HIDDEN] % BLOCK == 0 && dims[D_INTER] > 0 && dims[D_INTER] % BLOCK == 0
           && dims[D_BLOCK_SIZE] > 0 && dims[D_SLOTS] > 0 && dims[D_SLOTS] % dims[D_BLOCK_SIZE] == 0;
}

/* The workspace a step of `rows` rows with block tables `width` blocks wide needs, in floats; -1 for a shape
 * the step does not take. */
long decode_step_work(const long *dims, int rows, int width) {
    if (!shape_ok(dims, rows) || width < 1) return -1;
    workspace w;
    return carve(dims, rows, width, 0, &w);
}

/* tokens [rows] int64 and the embedding table [vocab, hidden] float32: the step's inputs; positions [rows] int64
 * and the rotary tables cos/sin [rope_len, head_dim] float32 (made by layers/rotary.py for positions
 * 0..rope_len - 1, so these are the per-op path's values to the bit); out [rows, hidden]: the final norm of the
 * last residual stream; with head_w (int8 [head_n, hidden]) and head_scale [head_n], also logits [rows, head_n] =
 * the head of out, as gemv_w8a8.c computes it (the tied head of a 4-bit model is int8: a separate call cost a
 * fork and, through the Python wrapper, a fresh 196 KB output whose pages faulted in every step: 150 us).
 * slots [rows] int64 (the new token's cache slot; negative: not stored); tables
 * [rows, width] int32; seq_lens [rows] int32 (the tokens each row attends over, its new one included).
 * Returns 0, or -1 for a shape it does not take or too small a workspace, -2 for a token or an index outside
 * the table or the cache. */
int decode_step(const long *dims, const intptr_t *layers, const float *final_norm, float eps, float scale,
                const long *tokens, const float *embed, long vocab, const long *positions, const float *rope_cos,
                const float *rope_sin, long rope_len, float *out, const int8_t *head_w, const float *head_scale,
                int head_n, float *logits, const long *slots, const int *tables, int width, const int *seq_lens,
                int rows, float *work, long work_floats) {
    if (!shape_ok(dims, rows) || width < 1 || decode_step_work(dims, rows, width) > work_floats) return -1;
    const long hidden = dims[D_HIDDEN], heads = dims[D_HEADS], kv_heads = dims[D_KV_HEADS], d = dims[D_HEAD_DIM];
    const long inter = dims[D_INTER], bs = dims[D_BLOCK_SIZE], nslots = dims[D_SLOTS];
    const long qd = heads * d, kd = kv_heads * d, nqkv = qd + 2 * kd, span = (long)width * bs;
    const int group = (int)(heads / kv_heads);
    for (int r = 0; r < rows; r++) {
        if (tokens[r] < 0 || tokens[r] >= vocab || positions[r] < 0 || positions[r] >= rope_len) return -2;
        if (seq_lens[r] < 1 || seq_lens[r] > span || slots[r] >= nslots) return -2;
        for (long b = 0; b < (seq_lens[r] + bs - 1) / bs; b++)
            if (tables[(long)r * width + b] < 0 || tables[(long)r * width + b] >= nslots / bs) return -2;
    }
    workspace w;
    carve(dims, rows, width, work, &w);
    float *x_in = w.embedded, *cos_ = w.cos, *sin_ = w.sin;
    for (int r = 0; r < rows; r++) {
        memcpy(x_in + r * hidden, embed + tokens[r] * hidden, hidden * sizeof(float));
        memcpy(cos_ + r * d, rope_cos + positions[r] * d, d * sizeof(float));
        memcpy(sin_ + r * d, rope_sin + positions[r] * d, d * sizeof(float));
    }
    const int tiles_qkv = (int)((nqkv + TILE - 1) / TILE), tiles_o = (int)((hidden + TILE - 1) / TILE);
    const int inter_blocks = (int)(inter / BLOCK);

    #pragma omp parallel
    {
        for (long l = 0; l < dims[D_LAYERS]; l++) {
            const intptr_t *p = layers + l * L_COUNT;
            float *kc = (float *)p[L_K], *vc = (float *)p[L_V];
            /* A: the layer's input norm (layer 0 starts the residual stream from the embeddings) */
            #pragma omp for schedule(static)
            for (int r = 0; r < rows; r++) {
                const float *xr = (l == 0 ? x_in : w.x) + r * hidden;
                add_rms_norm_row(xr, l == 0 ? 0 : w.resid + r * hidden, (const float *)p[L_IN_NORM],
                                 w.resid + r * hidden, w.h + r * hidden, (int)hidden, eps);
                quantize_row(w.h + r * hidden, (int)hidden, w.q + 2 * r * hidden, w.s + r * (hidden / BLOCK),
                             w.sums + r * (hidden / BLOCK));
            }
            /* B */
            #pragma omp for schedule(static)
            for (int t = 0; t < tiles_qkv; t++)
                w4a8_tile((const tile_q4 *)p[L_QKV], t, w.q, w.s, w.sums, w.qkv, rows, (int)nqkv, (int)hidden);
            /* C: k rotated and stored before any head attends, so every head of the group sees its new key; the
             * group's queries rotated beside it */
            #pragma omp for schedule(static)
            for (int item = 0; item < rows * kv_heads; item++) {
                int r = item / (int)kv_heads, g = item % (int)kv_heads;
                const float *row = w.qkv + r * nqkv;
                for (int h = g * group; h < (g + 1) * group; h++)
                    rotary_head(row + h * d, cos_ + r * d, sin_ + r * d, w.q_rot + (r * heads + h) * d, (int)d);
                if (slots[r] < 0) continue;
                long at = ((long)g * nslots + slots[r]) * d;
                rotary_head(row + qd + g * d, cos_ + r * d, sin_ + r * d, kc + at, (int)d);
                memcpy(vc + at, row + qd + kd + g * d, d * sizeof(float));
            }
            /* D: attention in halves (decode_attention.h says why), exactly as the per-op kernel runs it */
            #pragma omp for schedule(dynamic, 1)
            for (int item = 0; item < rows * kv_heads * 2; item++)
                attend_split_item(item, w.q_rot, kc, vc, tables, seq_lens, (int)heads, (int)kv_heads, (int)d, (int)bs,
                                  width, nslots, scale, w.scores, w.part_ml, w.part_o);
            /* D': the halves merged; each head's output is two or more whole blocks of o's input, quantized here */
            #pragma omp for schedule(static)
            for (int item = 0; item < rows * heads; item++) {
                int r = item / (int)heads, h = item % (int)heads;
                float *o = w.attn + r * qd + h * d;
                attend_merge_item(item, w.part_ml, w.part_o, (int)d, o);
                quantize_row(o, (int)d, w.q + 2 * (r * qd + h * d), w.s + r * (qd / BLOCK) + h * d / BLOCK,
                             w.sums + r * (qd / BLOCK) + h * d / BLOCK);
            }
            /* E */
            #pragma omp for schedule(static)
            for (int t = 0; t < tiles_o; t++)
                w4a8_tile((const tile_q4 *)p[L_O], t, w.q, w.s, w.sums, w.x, rows, (int)hidden, (int)qd);
            /* F */
            #pragma omp for schedule(static)
            for (int r = 0; r < rows; r++) {
                add_rms_norm_row(w.x + r * hidden, w.resid + r * hidden, (const float *)p[L_POST_NORM],
                                 w.resid + r * hidden, w.h + r * hidden, (int)hidden, eps);
                quantize_row(w.h + r * hidden, (int)hidden, w.q + 2 * r * hidden, w.s + r * (hidden / BLOCK),
                             w.sums + r * (hidden / BLOCK));
            }
            /* G + H: a block of 32 of the intermediate at a time: its 8 gate tiles and 8 up tiles, then silu(gate) * up
             * quantized as the down input, on the thread that just computed them (no barrier between, and the
             * gate/up values never cross to the other core's cache: that transfer made the separate phase cost
             * 0.39 ms a step on the default model) */
            #pragma omp for schedule(static)
            for (int j = 0; j < inter_blocks; j++) {
                const tile_q4 *gu = (const tile_q4 *)p[L_GATE_UP];
                for (int t = 0; t < BLOCK / TILE; t++) {
                    w4a8_tile(gu, j * (BLOCK / TILE) + t, w.q, w.s, w.sums, w.gate_up, rows, (int)(2 * inter),
                              (int)hidden);
                    w4a8_tile(gu, (int)(inter / TILE) + j * (BLOCK / TILE) + t, w.q, w.s, w.sums, w.gate_up, rows,
                              (int)(2 * inter), (int)hidden);
                }
                for (int r = 0; r < rows; r++) {
                    long at = (long)j * BLOCK;
                    const float *g = w.gate_up + r * 2 * inter + at;
                    float *a = w.act + r * inter + at;
                    silu_mul_row(g, g + inter, a, BLOCK);
                    quantize_row(a, BLOCK, w.q2 + 2 * (r * inter + at), w.s2 + r * inter_blocks + j,
                                 w.sums2 + r * inter_blocks + j);
                }
            }
            /* I */
            #pragma omp for schedule(static)
            for (int t = 0; t < tiles_o; t++)
                w4a8_tile((const tile_q4 *)p[L_DOWN], t, w.q2, w.s2, w.sums2, w.x, rows, (int)hidden, (int)inter);
        }
        #pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            add_rms_norm_row(w.x + r * hidden, w.resid + r * hidden, final_norm, w.resid + r * hidden,
                             out + r * hidden, (int)hidden, eps);
            if (head_w)
                q8_quantize_row(out + r * hidden, (int)hidden, w.head_q + r * hidden, w.head_s + r * (hidden / BLOCK));
        }
        if (head_w) {
            #pragma omp for schedule(static)
            for (int t = 0; t < head_n / 4; t++)
                q8_quad(head_w, head_scale, w.head_q, w.head_s, logits, rows, head_n, (int)hidden, t);
            #pragma omp single
            q8_tail(head_w, head_scale, w.head_q, w.head_s, logits, rows, head_n, (int)hidden);
        }
    }
    return 0;
}
