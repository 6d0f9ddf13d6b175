/* Calls flintlm's exported CPU kernels on tensors read from files, for builds the host cannot
 * load with ctypes (ARM64 under qemu-user). tests/kernels/test_arm64_emulated.py writes the
 * inputs, runs `driver CASE_DIR...` and compares the outputs with torch.
 *
 * A case folder holds `case.txt` (the kernel's name on the first line, then `name value` lines:
 * its integer and float arguments) and one raw little-endian file `<name>.bin` per input
 * tensor; each output tensor is written whole to `<name>.out`. `dtype` 0 is float32, 1 bfloat16.
 * Anything missing or failing aborts with a message: the test then fails, it never guesses.
 */
#include <stdio.h>

#include "common.h"

/* Exported beside the DECLARE_KERNELS set (quant_matmul.c, layers.c, attention.c). */
int quant_int8_available(void);
int quant_int8_has_dot(void);
int64_t flintlm_kernels_layout(int64_t *out, int64_t capacity);
const char *flintlm_kernels_tier(void);
void argmax_rows_f32(const float *logits, int64_t num_rows, int64_t vocab, int64_t *out);

#define MAX_SCALARS 32

typedef struct {
    const char *dir;
    char kernel[64];
    char names[MAX_SCALARS][64];
    double values[MAX_SCALARS];
    int num_scalars;
} test_case;

static void fail(const test_case *c, const char *what, const char *name) {
    fprintf(stderr, "driver: %s: %s %s\n", c->dir, what, name);
    exit(2);
}

static void read_case(test_case *c, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/case.txt", dir);
    c->dir = dir;
    c->num_scalars = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL || fscanf(f, "%63s", c->kernel) != 1) fail(c, "cannot read", path);
    while (c->num_scalars < MAX_SCALARS &&
           fscanf(f, "%63s %lf", c->names[c->num_scalars], &c->values[c->num_scalars]) == 2)
        c->num_scalars++;
    fclose(f);
}

static double scalar(const test_case *c, const char *name) {
    for (int i = 0; i < c->num_scalars; i++)
        if (strcmp(c->names[i], name) == 0) return c->values[i];
    fail(c, "missing scalar", name);
    return 0.0;
}

static int64_t integer(const test_case *c, const char *name) { return (int64_t)scalar(c, name); }

/* The whole of <name>.bin, in memory owned by the caller (freed at exit: one case, one run). */
static void *input(const test_case *c, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.bin", c->dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) fail(c, "missing input", name);
    fseek(f, 0, SEEK_END);
    const long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = malloc(size > 0 ? (size_t)size : 1);
    if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) fail(c, "cannot read", name);
    fclose(f);
    return data;
}

/* A zeroed buffer for an output the kernel fills (calloc: unwritten elements read as 0). */
static void *output_buffer(const test_case *c, size_t bytes) {
    void *data = calloc(bytes ? bytes : 1, 1);
    if (data == NULL) fail(c, "out of memory for", "an output");
    return data;
}

static void output(const test_case *c, const char *name, const void *data, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.out", c->dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, bytes, f) != bytes) fail(c, "cannot write", name);
    fclose(f);
}

static size_t element_size(const test_case *c) { return integer(c, "dtype") ? 2 : 4; }

/* What the build says of itself: int32 [int8 available, int8 on dot products], the ABI layout
 * report (int64, kernels/abi.py `layout()` as this compiler laid it out) and the tier's name.
 * No inputs. */
static void run_features(const test_case *c) {
    const int32_t values[2] = {quant_int8_available(), quant_int8_has_dot()};
    output(c, "features", values, sizeof values);
    int64_t layout[256];
    const int64_t count = flintlm_kernels_layout(layout, 256);
    if (count > 256) fail(c, "layout report longer than", "256");
    output(c, "layout", layout, (size_t)count * sizeof layout[0]);
    output(c, "tier", flintlm_kernels_tier(), strlen(flintlm_kernels_tier()));
}

static void run_quant_matmul(const test_case *c) {
    const int64_t rows = integer(c, "rows"), k = integer(c, "k"), n = integer(c, "n");
    const int64_t width = integer(c, "y_width"), col0 = integer(c, "col0");
    const void *x = input(c, "x");
    const uint8_t *q = input(c, "q");
    const uint16_t *d = input(c, "d"), *m = input(c, "m");
    const int weight_kind = (int)integer(c, "weight_kind");
    const int is_interleaved = (int)integer(c, "is_interleaved");
    const int use_int8 = (int)integer(c, "use_int8");
    const size_t bytes = (size_t)(rows * width) * element_size(c);
    void *y = output_buffer(c, bytes);
    const int status = integer(c, "dtype")
        ? quant_matmul_bf16(x, rows, k, q, d, m, weight_kind, is_interleaved, n, y, width, col0, use_int8)
        : quant_matmul_f32(x, rows, k, q, d, m, weight_kind, is_interleaved, n, y, width, col0, use_int8);
    if (status != 0) fail(c, "kernel reported status", "quant_matmul");
    output(c, "y", y, bytes);
}

static void run_paged_attention(const test_case *c) {
    const int64_t num_rows = integer(c, "num_rows");
    const int num_heads = (int)integer(c, "num_heads"), num_kv_heads = (int)integer(c, "num_kv_heads");
    const int head_dim = (int)integer(c, "head_dim"), block_size = (int)integer(c, "block_size");
    const int max_blocks = (int)integer(c, "max_blocks");
    const float scale = (float)scalar(c, "scale");
    const void *q = input(c, "q"), *k_cache = input(c, "k_cache"), *v_cache = input(c, "v_cache");
    const int32_t *tables = input(c, "block_tables"), *row_seq = input(c, "row_seq");
    const int32_t *row_ctx = input(c, "row_ctx");
    const int kv_kind = (int)integer(c, "kv_kind");
    const size_t bytes = (size_t)(num_rows * num_heads * head_dim) * element_size(c);
    void *out = output_buffer(c, bytes);
    if (integer(c, "dtype"))
        paged_attention_bf16(q, k_cache, v_cache, kv_kind, tables, row_seq, row_ctx, out,
                             num_rows, num_heads, num_kv_heads, head_dim, block_size, max_blocks,
                             scale);
    else
        paged_attention_f32(q, k_cache, v_cache, kv_kind, tables, row_seq, row_ctx, out,
                            num_rows, num_heads, num_kv_heads, head_dim, block_size, max_blocks,
                            scale);
    output(c, "out", out, bytes);
}

/* q, k and v are row views of one `qkv` input [num_tokens, row_stride]. */
static void run_rope_write_kv(const test_case *c) {
    const int64_t num_tokens = integer(c, "num_tokens"), row_stride = integer(c, "row_stride");
    const int num_heads = (int)integer(c, "num_heads"), num_kv_heads = (int)integer(c, "num_kv_heads");
    const int head_dim = (int)integer(c, "head_dim"), block_size = (int)integer(c, "block_size");
    const int64_t num_blocks = integer(c, "num_blocks");
    const size_t size = element_size(c);
    const char *qkv = input(c, "qkv");
    const char *k = qkv + (size_t)num_heads * head_dim * size;
    const char *v = k + (size_t)num_kv_heads * head_dim * size;
    const int64_t *positions = input(c, "positions"), *slots = input(c, "slots");
    const float *cos_table = input(c, "cos"), *sin_table = input(c, "sin");
    const size_t q_bytes = (size_t)(num_tokens * num_heads * head_dim) * size;
    const size_t k_bytes = (size_t)(num_tokens * num_kv_heads * head_dim) * size;
    const int kv_kind = (int)integer(c, "kv_kind");
    const size_t cache_bytes = (size_t)(num_blocks * num_kv_heads * block_size * head_dim)
                               * (kv_kind == KV_BF16 ? sizeof(bf16) : sizeof(float));
    void *q_out = output_buffer(c, q_bytes), *k_out = output_buffer(c, k_bytes);
    void *k_cache = output_buffer(c, cache_bytes), *v_cache = output_buffer(c, cache_bytes);
    if (integer(c, "dtype"))
        rope_write_kv_bf16((const bf16 *)qkv, (const bf16 *)k, (const bf16 *)v, row_stride,
                           positions, cos_table, sin_table, slots, q_out, k_out, k_cache, v_cache,
                           kv_kind, num_tokens, num_heads, num_kv_heads, head_dim, block_size);
    else
        rope_write_kv_f32((const float *)qkv, (const float *)k, (const float *)v, row_stride,
                          positions, cos_table, sin_table, slots, q_out, k_out, k_cache, v_cache,
                          kv_kind, num_tokens, num_heads, num_kv_heads, head_dim, block_size);
    output(c, "q_out", q_out, q_bytes);
    output(c, "k_out", k_out, k_bytes);
    output(c, "k_cache", k_cache, cache_bytes);
    output(c, "v_cache", v_cache, cache_bytes);
}

/* has_x 0 runs the norm alone (x NULL). */
static void run_add_rms_norm(const test_case *c) {
    const int64_t num_tokens = integer(c, "num_tokens");
    const int size = (int)integer(c, "size");
    const float eps = (float)scalar(c, "eps");
    const void *x = integer(c, "has_x") ? input(c, "x") : NULL;
    void *residual = input(c, "residual");
    const void *weight = input(c, "weight");
    const size_t bytes = (size_t)(num_tokens * size) * element_size(c);
    void *out = output_buffer(c, bytes);
    if (integer(c, "dtype"))
        add_rms_norm_bf16(x, residual, weight, out, num_tokens, size, eps);
    else
        add_rms_norm_f32(x, residual, weight, out, num_tokens, size, eps);
    output(c, "residual", residual, bytes);
    output(c, "out", out, bytes);
}

static void run_silu_and_mul(const test_case *c) {
    const int64_t num_tokens = integer(c, "num_tokens");
    const int size = (int)integer(c, "size");
    const void *gate_up = input(c, "gate_up");
    const size_t bytes = (size_t)(num_tokens * size) * element_size(c);
    void *out = output_buffer(c, bytes);
    if (integer(c, "dtype"))
        silu_and_mul_bf16(gate_up, out, num_tokens, size);
    else
        silu_and_mul_f32(gate_up, out, num_tokens, size);
    output(c, "out", out, bytes);
}

static void run_argmax_rows(const test_case *c) {
    const int64_t num_rows = integer(c, "num_rows"), vocab = integer(c, "vocab");
    const float *logits = input(c, "logits");
    int64_t *out = output_buffer(c, sizeof(int64_t) * (size_t)num_rows);
    argmax_rows_f32(logits, num_rows, vocab, out);
    output(c, "out", out, sizeof(int64_t) * (size_t)num_rows);
}

static const struct {
    const char *name;
    void (*run)(const test_case *);
} RUNNERS[] = {
    {"features", run_features},
    {"quant_matmul", run_quant_matmul},
    {"paged_attention", run_paged_attention},
    {"rope_write_kv", run_rope_write_kv},
    {"add_rms_norm", run_add_rms_norm},
    {"silu_and_mul", run_silu_and_mul},
    {"argmax_rows", run_argmax_rows},
};

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        test_case c;
        read_case(&c, argv[i]);
        size_t r = 0;
        while (r < sizeof RUNNERS / sizeof RUNNERS[0] && strcmp(RUNNERS[r].name, c.kernel) != 0) r++;
        if (r == sizeof RUNNERS / sizeof RUNNERS[0]) fail(&c, "unknown kernel", c.kernel);
        RUNNERS[r].run(&c);
    }
    return 0;
}
