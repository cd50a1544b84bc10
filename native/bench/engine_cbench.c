/* The native floor for the Python benchmarks: seals a batch of COUNT records of SIZE bytes with the
 * library called from C (fresh random nonces, as the Python batch path does) and prints JSON.
 *   engine-cbench SIZE COUNT [THREADS] [BACKEND] [REPEATS] [NONCE_LEN]                          */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine_aead.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    size_t size, count, nonce_len = 16, i;
    int threads = 1, backend = ENGINE_BACKEND_AUTO, repeats = 7, r, rc = 0;
    uint8_t key[32], *in = NULL, *out = NULL, *nonces = NULL, *tags = NULL;
    int64_t *offsets = NULL;
    double *t = NULL;
    engine_key *k = NULL;
    if (argc < 3) {
        fprintf(stderr, "usage: %s SIZE COUNT [THREADS] [ipsec-mb|openssl|auto] [REPEATS] [NONCE_LEN]\n", argv[0]);
        return 2;
    }
    size = strtoull(argv[1], NULL, 10);
    count = strtoull(argv[2], NULL, 10);
    if (argc > 3) threads = atoi(argv[3]);
    if (argc > 4) {
        if (strcmp(argv[4], "ipsec-mb") == 0) backend = ENGINE_BACKEND_IPSECMB;
        else if (strcmp(argv[4], "openssl") == 0) backend = ENGINE_BACKEND_OPENSSL;
    }
    if (argc > 5) repeats = atoi(argv[5]);
    if (argc > 6) nonce_len = strtoull(argv[6], NULL, 10);
    if (count == 0 || repeats < 1) return 2;
    in = malloc(size * count + 1);
    out = malloc(size * count + 1);
    nonces = malloc(count * nonce_len);
    tags = malloc(count * 16);
    offsets = malloc((count + 1) * sizeof(int64_t));
    t = malloc(sizeof(double) * (size_t)repeats);
    if (!in || !out || !nonces || !tags || !offsets || !t) {
        rc = 3;
        goto done;
    }
    memset(in, 0x5a, size * count + 1);
    memset(out, 0, size * count + 1);
    for (i = 0; i <= count; i++) offsets[i] = (int64_t)(i * size);
    if (engine_random(key, sizeof(key)) != ENGINE_OK || engine_key_new(&k, backend, key) != ENGINE_OK) {
        fprintf(stderr, "cannot create a key for this backend\n");
        rc = 3;
        goto done;
    }
    for (r = 0; r < repeats; r++) {
        double t0 = now();
        if (engine_seal_batch(k, count, in, offsets, out, nonces, nonce_len, 1, tags, NULL, NULL, 0,
                              threads) != ENGINE_OK) {
            rc = 4;
            goto done;
        }
        t[r] = now() - t0;
    }
    qsort(t, (size_t)repeats, sizeof(double), cmp);
    printf("{\"backend\": \"%s\", \"isa\": \"%s\", \"size\": %zu, \"count\": %zu, \"threads\": %d, "
           "\"median_s\": %.9f, \"records_per_s\": %.1f, \"bytes_per_s\": %.1f}\n",
           engine_backend_name(engine_key_backend(k)), engine_backend_isa(engine_key_backend(k)), size,
           count, threads, t[repeats / 2], (double)count / t[repeats / 2],
           (double)(size * count) / t[repeats / 2]);
done:
    engine_key_free(k);
    free(in);
    free(out);
    free(nonces);
    free(tags);
    free(offsets);
    free(t);
    return rc;
}
