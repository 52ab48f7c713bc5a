/*
 * repvgg-rs C ABI: FP32 CPU inference for RepVGG networks.
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
 * message. NULL pointers, short buffers and bad sizes are REPVGG_USAGE, never crashes.
 * A model may be shared by any number of threads; a session is used by one thread at a
 * time (make one per thread).
 */
#ifndef REPVGG_H
#define REPVGG_H

#include <stddef.h>

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

/* Frees a model (NULL is ignored). Sessions made from it stay valid. */
void repvgg_model_free(RepvggModel *model);

/* Starts a session with `threads` workers (0: one per core). */
int repvgg_session_new(const RepvggModel *model, int threads, RepvggSession **out);

/* Runs n images of 3 x h x w floats (NCHW, contiguous) and writes n x classes logits.
 * The shape is checked against the limits before input is read. */
int repvgg_session_run(RepvggSession *s, const float *input, size_t n, size_t h, size_t w, float *logits,
                       size_t logits_len);

/* Frees a session (NULL is ignored). */
void repvgg_session_free(RepvggSession *s);

/* The message of this thread's last failed call ("" before any); valid until the next
 * failed call on this thread. */
const char *repvgg_last_error(void);

/* The library version, e.g. "0.1.0". */
const char *repvgg_version(void);

#ifdef __cplusplus
}
#endif

#endif /* REPVGG_H */
