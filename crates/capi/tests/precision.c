/*
 * Precision from C (compiled and run by tests/c_example.rs): a quantized model says
 * "int8" and its sessions run INT8 by default, naming their int8 kernel set; "f32" runs
 * it in FP32; "int8" on a float model and an unknown name are REPVGG_USAGE with a
 * message. Prints one line per check to stderr and the default session's logits to
 * stdout (one per line, for the test to compare with Rust's); exits 0 only if every
 * check held.
 *
 *     usage: precision QUANTIZED.safetensors FLOAT.safetensors ARCH.toml
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repvgg.h"

static int failures = 0;

static void check(int ok, const char *what, int status) {
    fprintf(stderr, "%s %s: %d %s\n", ok ? "ok" : "FAILED", what, status, status ? repvgg_last_error() : "");
    if (!ok) failures++;
}

static int same(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s QUANTIZED FLOAT ARCH\n", argv[0]);
        return 2;
    }
    check(repvgg_abi_version() == REPVGG_ABI_VERSION && REPVGG_ABI_VERSION == 3, "abi version 3", 0);
    RepvggModel *quantized = NULL, *floating = NULL;
    int status = repvgg_model_load(argv[1], argv[3], &quantized);
    if (status == REPVGG_OK) status = repvgg_model_load(argv[2], argv[3], &floating);
    if (status != REPVGG_OK) {
        fprintf(stderr, "setup failed with %d: %s\n", status, repvgg_last_error());
        return 1;
    }
    check(same(repvgg_model_precision(quantized), "int8"), "quantized model is int8", 0);
    check(same(repvgg_model_precision(floating), "f32"), "float model is f32", 0);
    check(repvgg_model_precision(NULL) == NULL && same(repvgg_last_error(), "model is NULL"), "NULL model", 0);

    RepvggSession *own = NULL, *int8 = NULL, *f32 = NULL, *refused = NULL;
    status = repvgg_session_new(quantized, 1, &own);
    check(status == REPVGG_OK && same(repvgg_session_precision(own), "int8"), "old constructor runs int8", status);
    status = repvgg_session_new2(quantized, 1, NULL, &int8);
    check(status == REPVGG_OK && same(repvgg_session_precision(int8), "int8"), "NULL precision is the model's", status);
    const char *kernels = repvgg_session_int8_kernels(int8);
    check(same(kernels, "amx") || same(kernels, "avx512-vnni") || same(kernels, "avx2") || same(kernels, "portable"),
          "int8 kernels named", 0);
    fprintf(stderr, "int8 kernels %s\n", kernels ? kernels : "(null)");
    status = repvgg_session_new2(quantized, 1, "f32", &f32);
    check(status == REPVGG_OK && same(repvgg_session_precision(f32), "f32") && same(repvgg_session_int8_kernels(f32), ""),
          "f32 on a quantized model", status);

    status = repvgg_session_new2(floating, 1, "int8", &refused);
    check(status == REPVGG_USAGE && refused == NULL && strstr(repvgg_last_error(), "INT8 needs a quantized model"),
          "int8 on a float model refused", status);
    status = repvgg_session_new2(quantized, 1, "fp16", &refused);
    check(status == REPVGG_USAGE && refused == NULL && strstr(repvgg_last_error(), "unknown precision `fp16`"),
          "unknown precision refused", status);
    /* BF16 runs where the CPU has AVX512-BF16 and is a CPU status elsewhere. */
    RepvggSession *bf16 = NULL;
    status = repvgg_session_new2(floating, 1, "bf16", &bf16);
    check((status == REPVGG_OK && same(repvgg_session_precision(bf16), "bf16")) ||
              (status == REPVGG_CPU && bf16 == NULL && strstr(repvgg_last_error(), "AVX512-BF16")),
          "bf16 runs or is a CPU status", status);
    repvgg_session_free(bf16);
    status = repvgg_session_new2(quantized, -1, "int8", &refused);
    check(status == REPVGG_USAGE && refused == NULL, "negative threads refused", status);
    check(repvgg_session_precision(NULL) == NULL && repvgg_session_int8_kernels(NULL) == NULL, "NULL session", 0);

    size_t n = 2, h = 24, w = 24, classes = (size_t)repvgg_model_num_classes(quantized);
    size_t len = n * 3 * h * w, out = n * classes;
    float *x = malloc(len * sizeof *x), *a = malloc(out * sizeof *a), *b = malloc(out * sizeof *b);
    float *c = malloc(out * sizeof *c);
    if (!x || !a || !b || !c) return 1;
    for (size_t i = 0; i < len; i++) x[i] = (float)((int)((i * 29) % 97) - 48) / 32.0f;
    status = repvgg_session_run2(own, x, len, n, h, w, a, out);
    check(status == REPVGG_OK, "int8 runs", status);
    status = repvgg_session_run2(int8, x, len, n, h, w, b, out);
    check(status == REPVGG_OK && memcmp(a, b, out * sizeof *a) == 0, "both int8 sessions agree bitwise", status);
    status = repvgg_session_run2(f32, x, len, n, h, w, c, out);
    check(status == REPVGG_OK && memcmp(a, c, out * sizeof *a) != 0, "f32 runs, and differently", status);
    for (size_t i = 0; i < out; i++) printf("%.9g\n", a[i]);

    repvgg_session_free(own);
    repvgg_session_free(int8);
    repvgg_session_free(f32);
    repvgg_model_free(quantized);
    repvgg_model_free(floating);
    free(x);
    free(a);
    free(b);
    free(c);
    fprintf(stderr, "%d failed\n", failures);
    return failures ? 1 : 0;
}
