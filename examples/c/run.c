/*
 * Runs a RepVGG model through the C ABI: loads the weights given on the command line,
 * runs a deterministic batch of two h x w images and prints each logit on its own line
 * (as "%.9g", which round-trips a float), then shows how failures are reported.
 *
 *     usage: run WEIGHTS.safetensors H W [THREADS]
 *
 * Build (docs/c.md):
 *     cc examples/c/run.c -I crates/capi/include target/release/librepvgg_capi.a \
 *        -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o run
 */
#include <stdio.h>
#include <stdlib.h>

#include "repvgg.h"

static int fail(const char *what, int status) {
    fprintf(stderr, "%s failed with status %d: %s\n", what, status, repvgg_last_error());
    return status;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s WEIGHTS H W [THREADS]\n", argv[0]);
        return 2;
    }
    size_t n = 2, h = (size_t)atol(argv[2]), w = (size_t)atol(argv[3]);
    int threads = argc > 4 ? atoi(argv[4]) : 0;

    RepvggModel *model = NULL;
    int status = repvgg_model_load(argv[1], NULL, &model);
    if (status != REPVGG_OK) return fail("repvgg_model_load", status);
    int classes = repvgg_model_num_classes(model);

    RepvggSession *session = NULL;
    status = repvgg_session_new(model, threads, &session);
    if (status != REPVGG_OK) return fail("repvgg_session_new", status);
    /* The session keeps what it needs of the model. */
    repvgg_model_free(model);

    size_t len = n * 3 * h * w;
    float *input = malloc(len * sizeof *input);
    float *logits = malloc(n * (size_t)classes * sizeof *logits);
    if (!input || !logits) return 1;
    /* Values exact in binary, the same the Rust test computes. */
    for (size_t i = 0; i < len; i++) input[i] = (float)((int)((i * 37) % 101) - 50) / 64.0f;

    status = repvgg_session_run2(session, input, len, n, h, w, logits, n * (size_t)classes);
    if (status != REPVGG_OK) return fail("repvgg_session_run2", status);
    for (size_t i = 0; i < n * (size_t)classes; i++) printf("%.9g\n", logits[i]);

    /* Failures are statuses with a message, never crashes. */
    status = repvgg_session_run2(session, input, len, n, h, w, logits, 1);
    fprintf(stderr, "short buffer: %d %s\n", status, repvgg_last_error());
    status = repvgg_session_run2(session, input, len - 1, n, h, w, logits, n * (size_t)classes);
    fprintf(stderr, "short input: %d %s\n", status, repvgg_last_error());
    status = repvgg_session_run2(session, NULL, len, n, h, w, logits, n * (size_t)classes);
    fprintf(stderr, "null input: %d %s\n", status, repvgg_last_error());
    status = repvgg_model_load("/nonexistent/w.safetensors", NULL, &model);
    fprintf(stderr, "missing file: %d %s\n", status, repvgg_last_error());
    fprintf(stderr, "classes of NULL: %d\n", repvgg_model_num_classes(NULL));
    fprintf(stderr, "version %s\n", repvgg_version());

    repvgg_session_free(session);
    free(input);
    free(logits);
    return 0;
}
