/*
 * repvgg_session_run2 from C (compiled and run by tests/c_example.rs): the input's
 * length and overlapping buffers are refused with REPVGG_USAGE and a message, before
 * anything is read or written, and the right length gives repvgg_session_run's logits
 * bit for bit. Prints one line per check to stderr; exits 0 only if every check held.
 *
 *     usage: run2 WEIGHTS.safetensors
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repvgg.h"

static int failures = 0;

/* Records a check: `ok` and a line naming it with the last status and message. */
static void check(int ok, const char *what, int status) {
    fprintf(stderr, "%s %s: %d %s\n", ok ? "ok" : "FAILED", what, status, status ? repvgg_last_error() : "");
    if (!ok) failures++;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s WEIGHTS\n", argv[0]);
        return 2;
    }
    check(repvgg_abi_version() == REPVGG_ABI_VERSION && REPVGG_ABI_VERSION >= 2, "abi version >= 2", 0);
    RepvggModel *model = NULL;
    RepvggSession *session = NULL;
    int status = repvgg_model_load(argv[1], NULL, &model);
    if (status == REPVGG_OK) status = repvgg_session_new(model, 1, &session);
    if (status != REPVGG_OK) {
        fprintf(stderr, "setup failed with %d: %s\n", status, repvgg_last_error());
        return 1;
    }
    size_t n = 2, h = 11, w = 13, classes = (size_t)repvgg_model_num_classes(model);
    size_t len = n * 3 * h * w, out = n * classes;
    /* One allocation holding the input, then room for the logits right after it. */
    float *both = malloc((len + out) * sizeof *both);
    float *old = malloc(out * sizeof *old);
    float *logits = malloc(out * sizeof *logits);
    float *copy = malloc(len * sizeof *copy);
    if (!both || !old || !logits || !copy) return 1;
    for (size_t i = 0; i < len; i++) both[i] = (float)((int)((i * 29) % 97) - 48) / 32.0f;
    memcpy(copy, both, len * sizeof *copy);

    status = repvgg_session_run(session, both, n, h, w, old, out);
    check(status == REPVGG_OK, "old path runs", status);

    /* A length that does not match the shape: one float short, one too many. */
    memset(logits, 0, out * sizeof *logits);
    status = repvgg_session_run2(session, both, len - 1, n, h, w, logits, out);
    check(status == REPVGG_USAGE && strstr(repvgg_last_error(), "input_len is 857, the shape [2, 3, 11, 13] needs 858"),
          "short input_len refused", status);
    status = repvgg_session_run2(session, both, len + 1, n, h, w, logits, out);
    check(status == REPVGG_USAGE, "long input_len refused", status);
    int untouched = 1;
    for (size_t i = 0; i < out; i++) untouched &= logits[i] == 0.0f;
    check(untouched, "refused calls wrote no logits", 0);

    /* Overlap by one float, or in place: refused for both functions, input untouched. */
    status = repvgg_session_run2(session, both, len, n, h, w, both + len - 1, out);
    check(status == REPVGG_USAGE && strstr(repvgg_last_error(), "must not share a byte"), "overlap refused", status);
    status = repvgg_session_run2(session, both, len, n, h, w, both, out);
    check(status == REPVGG_USAGE, "in place refused", status);
    status = repvgg_session_run(session, both, n, h, w, both + 1, out);
    check(status == REPVGG_USAGE, "overlap refused by the old path", status);
    check(memcmp(both, copy, len * sizeof *copy) == 0, "refused calls wrote nothing into the input", 0);

    /* The right length, with the logits in a separate buffer and right after the input. */
    status = repvgg_session_run2(session, both, len, n, h, w, logits, out);
    check(status == REPVGG_OK && memcmp(logits, old, out * sizeof *old) == 0, "run2 equals run bitwise", status);
    status = repvgg_session_run2(session, both, len, n, h, w, both + len, out);
    check(status == REPVGG_OK && memcmp(both + len, old, out * sizeof *old) == 0, "adjacent buffers run", status);

    repvgg_session_free(session);
    repvgg_model_free(model);
    free(both);
    free(old);
    free(logits);
    free(copy);
    fprintf(stderr, "%d failed\n", failures);
    return failures ? 1 : 0;
}
