/* A small-batch decode step of the Llama decoder through every layer in one call.
 *
 * The same math as models/llama.py's forward with the quantized linears (quant_matmul.c) and
 * the fused kernels (layers.c, attention.c), composed here instead of from Python: with a few
 * tokens a step, Python's per-layer dispatch cost as much as the matmuls (measured ~8 of 21 ms
 * a token). Like a CUDA graph it is an optional fast path; models/fast_decode.py decides when
 * it applies and builds the layer table from the loaded model.
 */
#include "common.h"

/* decode_matrix, decode_layer and decode_batch: abi.h (declared in kernels/abi.py). */

/* out [rows, width] = x [rows, k] times the quantized matrix (width = its out_features);
 * returns from the step with 1 where the matmul could not allocate. */
#define MATMUL(SUFFIX, x, k, matrix, out, width)                                                 \
    do {                                                                                         \
        if (quant_matmul_##SUFFIX(x, rows, k, (matrix).q, (matrix).d, (matrix).m,                \
                                  (matrix).weight_kind, (matrix).is_interleaved, width, out,    \
                                  width, 0, b->use_int8))                                        \
            return 1;                                                                            \
    } while (0)

#define DEFINE_DECODE_STEP(SUFFIX, T)                                                             \
/* residual [rows, hidden]: the embeddings in, the residual stream after the last layer out;    \
 * `hidden` [rows, hidden]: the last layer's output (to be added by the final norm). scratch   \
 * holds rows x (hidden + (q + 2 kv) + q + kv + q + 2 intermediate + intermediate) elements.   \
 * Returns 0, or 1 where a matmul could not allocate (the step's outputs are then invalid). */ \
int decode_step_##SUFFIX(const decode_layer *layers, int num_layers, const decode_batch *b,   \
                          T *residual, T *hidden, T *scratch) {                                 \
    const int64_t rows = b->num_rows;                                                           \
    const int q_size = b->num_heads * b->head_dim, kv_size = b->num_kv_heads * b->head_dim;    \
    const int qkv_size = q_size + 2 * kv_size;                                                  \
    T *normed = scratch;                                  /* [rows, hidden] */                  \
    T *qkv = normed + rows * b->hidden;                   /* [rows, q + 2 kv] */                \
    T *q_rot = qkv + rows * qkv_size;                     /* [rows, q] */                       \
    T *k_rot = q_rot + rows * q_size;                     /* [rows, kv] */                      \
    T *attn = k_rot + rows * kv_size;                     /* [rows, q] */                       \
    T *gate_up = attn + rows * q_size;                    /* [rows, 2 intermediate] */          \
    T *act = gate_up + rows * 2 * (int64_t)b->intermediate; /* [rows, intermediate] */          \
    for (int l = 0; l < num_layers; l++) {                                                      \
        const decode_layer *layer = &layers[l];                                                 \
        add_rms_norm_##SUFFIX(l ? hidden : 0, residual, (const T *)layer->input_norm, normed,   \
                              rows, b->hidden, b->eps);                                         \
        MATMUL(SUFFIX, normed, b->hidden, layer->qkv, qkv, qkv_size);                           \
        rope_write_kv_##SUFFIX(qkv, qkv + q_size, qkv + q_size + kv_size, qkv_size,             \
                               b->positions, b->cos_table, b->sin_table, b->slots, q_rot,       \
                               k_rot, layer->k_cache, layer->v_cache, b->kv_kind, rows,         \
                               b->num_heads, b->num_kv_heads, b->head_dim, b->block_size);      \
        paged_attention_##SUFFIX(q_rot, layer->k_cache, layer->v_cache, b->kv_kind,             \
                                 b->block_tables, b->row_seq, b->row_ctx, attn, rows,           \
                                 b->num_heads, b->num_kv_heads, b->head_dim, b->block_size,     \
                                 b->max_blocks, b->scale);                                      \
        MATMUL(SUFFIX, attn, q_size, layer->o, hidden, b->hidden);                              \
        add_rms_norm_##SUFFIX(hidden, residual, (const T *)layer->post_attention_norm, normed,  \
                              rows, b->hidden, b->eps);                                         \
        MATMUL(SUFFIX, normed, b->hidden, layer->gate_up, gate_up, 2 * b->intermediate);        \
        silu_and_mul_##SUFFIX(gate_up, act, rows, b->intermediate);                             \
        MATMUL(SUFFIX, act, b->intermediate, layer->down, hidden, b->hidden);                   \
    }                                                                                           \
    return 0;                                                                                   \
}

DEFINE_DECODE_STEP(f32, float)
DEFINE_DECODE_STEP(bf16, bf16)
