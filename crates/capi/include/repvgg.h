/*
 * repvgg-rs C ABI: FP32 and INT8 CPU inference for RepVGG networks.
 *
 * Link with the static library (`target/release/librepvgg_capi.a`) and the system
 * libraries Rust's standard library needs:
 *
 *     cc app.c -I crates/capi/include target/release/librepvgg_capi.a \
 *        -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
 *
 * or with the shared library: `-L target/release -lrepvgg_capi`.
 *
 * Every function that can fail returns an int status: 0 on success, otherwise the kind
 * of error, numbered as the `repvgg` CLI's exit codes (docs/hardening.md, "Errors and exit codes");
 * 1 is an unexpected internal failure. repvgg_last_error() then gives the one-line
 * message. NULL pointers, short buffers, bad sizes, misaligned or overlapping buffers
 * are REPVGG_USAGE, never crashes.
 * A model may be shared by any number of threads; a session is used by one thread at a
 * time (make one per thread).
 */
#ifndef REPVGG_H
#define REPVGG_H

#include <stddef.h>

/* The version of the ABI this header declares. 3 added repvgg_model_precision,
 * repvgg_session_new2 (which takes a precision), repvgg_session_precision and
 * repvgg_session_int8_kernels; 2 added repvgg_session_run2, which takes the input's
 * length (1: the first release). Compare with repvgg_abi_version(), the library's, when
 * the library is loaded at run time. */
#define REPVGG_ABI_VERSION 3

#ifdef __cplusplus
extern "C" {
#endif

enum {
    REPVGG_OK = 0,
    REPVGG_INTERNAL = 1,
    REPVGG_USAGE = 2,   /* invalid argument: NULL, short buffer, bad size or option */
    REPVGG_IO = 3,      /* missing, unreadable or non-regular file */
    REPVGG_FORMAT = 4,  /* malformed safetensors file */
    REPVGG_MODEL = 5,   /* weights that do not fit the architecture */
    REPVGG_INPUT = 6,   /* bad input (non-finite values, empty or unusable shape) */
    REPVGG_LIMIT = 7,   /* a resource limit (sides, batch, memory, file size) */
    REPVGG_CPU = 8,     /* the CPU lacks a required instruction set */
    REPVGG_ARCH = 9,    /* unknown architecture name or invalid architecture file */
    REPVGG_NUMERIC = 10 /* the logits overflowed f32 */
};

typedef struct RepvggModel RepvggModel;
typedef struct RepvggSession RepvggSession;

/* Loads a .safetensors checkpoint (any naming form, F32/F16/BF16, deploy or training
 * form, fused at load). arch: a built-in variant ("A0", "B1g4", ...) or an architecture
 * .toml path, or NULL to infer it from the tensor shapes. */
int repvgg_model_load(const char *weights_path, const char *arch, RepvggModel **out);

/* Classes per image (the logits' row length), or -1 if model is NULL. */
int repvgg_model_num_classes(const RepvggModel *model);

/* The arithmetic the model runs in by default: "int8" for a file written by
 * `repvgg quantize`, else "f32" (a static string); NULL if model is NULL. */
const char *repvgg_model_precision(const RepvggModel *model);

/* Frees a model (NULL is ignored). Sessions made from it stay valid. */
void repvgg_model_free(RepvggModel *model);

/* Starts a session with `threads` workers (0: one per core), in the model's own
 * precision. */
int repvgg_session_new(const RepvggModel *model, int threads, RepvggSession **out);

/* repvgg_session_new with a precision: "f32", "int8" (a quantized model only; a quantized
 * model's "f32" runs its dequantized weights), "bf16" (a CPU with AVX512-BF16 only), or
 * NULL for the model's own. An unknown name, and "int8" on a float model, are
 * REPVGG_USAGE with a message; "bf16" on a CPU without AVX512-BF16 is REPVGG_CPU. */
int repvgg_session_new2(const RepvggModel *model, int threads, const char *precision, RepvggSession **out);

/* The arithmetic the session runs in: "f32", "int8" or "bf16" (a static string); NULL if
 * s is NULL. */
const char *repvgg_session_precision(const RepvggSession *s);

/* The int8 kernel set of an INT8 session: "amx", "avx512-vnni", "avx2" or "portable"; "" for an
 * FP32 session (static strings); NULL if s is NULL. */
const char *repvgg_session_int8_kernels(const RepvggSession *s);

/* Runs n images of 3 x h x w floats (NCHW, contiguous) from input, which holds
 * input_len floats, and writes n x classes logits to logits, which holds logits_len
 * floats. Prefer it to repvgg_session_run. Checked before input is read: the shape
 * against the limits (REPVGG_LIMIT, REPVGG_INPUT); then, as REPVGG_USAGE, input_len
 * against the shape (exactly n * 3 * h * w), logits_len against the batch (at least
 * n * classes), both pointers' alignment for float, and overlap: the input_len floats
 * read and the n * classes floats written must not share a byte (not even in place). */
int repvgg_session_run2(RepvggSession *s, const float *input, size_t input_len, size_t n, size_t h, size_t w,
                        float *logits, size_t logits_len);

/* repvgg_session_run2 without input_len, kept only for callers written against ABI
 * version 1: it reads n * 3 * h * w floats from input and cannot tell a shorter buffer,
 * which it reads past the end of. Every other check is repvgg_session_run2's. */
int repvgg_session_run(RepvggSession *s, const float *input, size_t n, size_t h, size_t w, float *logits,
                       size_t logits_len);

/* Frees a session (NULL is ignored). */
void repvgg_session_free(RepvggSession *s);

/* The message of this thread's last failed call ("" before any); valid until the next
 * failed call on this thread. */
const char *repvgg_last_error(void);

/* The library version, e.g. "0.1.0". */
const char *repvgg_version(void);

/* The ABI version the library implements (REPVGG_ABI_VERSION of its own header). */
int repvgg_abi_version(void);

#ifdef __cplusplus
}
#endif

#endif /* REPVGG_H */
