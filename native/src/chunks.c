/* C2SP chunked encryption (c2sp.org/chunked-encryption): runs of chunks sealed straight into the
 * message layout (body || tag per chunk) and opened out of it, with each chunk's nonce derived
 * here from the base nonce and the chunk's index. A stream then costs one call per window of
 * chunks and no per-chunk work in the caller: no nonce array, no offsets, no tag array, no
 * scatter or gather between the batch layout and the message layout. */
#include <stdatomic.h>
#include <string.h>

#include "backend.h"

#define CHUNK ((uint64_t)ENGINE_CHUNK_BYTES)
#define SEALED ((uint64_t)ENGINE_CHUNK_SEALED_BYTES)

static const uint8_t no_aad[1]; /* chunks have empty AAD; never read */

typedef struct chunk_ctx {
    const engine_key *key;
    const uint8_t *base_nonce;
    uint64_t first;
    size_t n;
    uint64_t last; /* the body bytes of chunk n - 1 */
    const uint8_t *in;
    uint8_t *out;
    atomic_size_t failed; /* opening: the lowest index that failed, n while none has */
} chunk_ctx;

/* base_nonce XOR the chunk index, big-endian across the 12 bytes (the index fits in the last 8). */
static void chunk_nonce(const chunk_ctx *c, size_t j, uint8_t nonce[ENGINE_CHUNK_NONCE_BYTES]) {
    uint64_t index = c->first + j;
    int b;
    memcpy(nonce, c->base_nonce, ENGINE_CHUNK_NONCE_BYTES);
    for (b = ENGINE_CHUNK_NONCE_BYTES - 1; b >= ENGINE_CHUNK_NONCE_BYTES - 8; b--, index >>= 8)
        nonce[b] ^= (uint8_t)index;
}

static uint64_t body_len(const chunk_ctx *c, size_t j) { return j + 1 == c->n ? c->last : CHUNK; }

static int64_t seal_range(void *arg, size_t begin, size_t end) {
    const chunk_ctx *c = (const chunk_ctx *)arg;
    const engine_key *key = c->key;
    uint8_t nonce[ENGINE_CHUNK_NONCE_BYTES];
    engine_worker w;
    int rc;
    size_t j;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    for (j = begin; j < end && rc == ENGINE_OK; j++) {
        const uint64_t len = body_len(c, j);
        uint8_t *dst = c->out + j * SEALED;
        chunk_nonce(c, j, nonce);
        rc = key->ops->seal(key, &w, dst, dst + len, c->in + j * CHUNK, len, nonce,
                            ENGINE_CHUNK_NONCE_BYTES, no_aad, 0);
    }
    key->ops->worker_free(&w);
    return rc;
}

/* Lowers c->failed to j unless it is already lower. */
static void note_failure(chunk_ctx *c, size_t j) {
    size_t seen = atomic_load(&c->failed);
    while (j < seen && !atomic_compare_exchange_weak(&c->failed, &seen, j)) {
    }
}

static int64_t open_range(void *arg, size_t begin, size_t end) {
    chunk_ctx *c = (chunk_ctx *)arg;
    const engine_key *key = c->key;
    uint8_t nonce[ENGINE_CHUNK_NONCE_BYTES];
    engine_worker w;
    int rc;
    size_t j;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    /* Chunks past a failure are never released: no need to open them. */
    for (j = begin; j < end && j < atomic_load_explicit(&c->failed, memory_order_relaxed); j++) {
        const uint64_t len = body_len(c, j);
        const uint8_t *src = c->in + j * SEALED;
        chunk_nonce(c, j, nonce);
        rc = key->ops->open(key, &w, c->out + j * CHUNK, src, len, src + len, nonce,
                            ENGINE_CHUNK_NONCE_BYTES, no_aad, 0);
        if (rc == ENGINE_EAUTH) {
            note_failure(c, j);
            rc = ENGINE_OK;
            break;
        }
        if (rc != ENGINE_OK) break;
    }
    key->ops->worker_free(&w);
    return rc;
}

/* The run's chunk count is consistent with `len` bytes of input made of `unit`-byte chunks whose
 * last one holds `min_last` to `unit` bytes; sets c->last to the last chunk's body bytes. */
static int run_ok(chunk_ctx *c, uint64_t len, uint64_t unit, uint64_t min_last) {
    uint64_t last;
    if (c->key == NULL || c->base_nonce == NULL || c->key->algorithm != ENGINE_ALG_AES_GCM)
        return 0;
    if (c->n == 0) return len == 0;
    if (c->first > ENGINE_CHUNK_MAX || (uint64_t)c->n > ENGINE_CHUNK_MAX - c->first) return 0;
    if (len < (uint64_t)(c->n - 1) * unit + min_last) return 0;
    last = len - (uint64_t)(c->n - 1) * unit;
    if (last > unit) return 0;
    c->last = last - (unit - CHUNK);
    return c->in != NULL && c->out != NULL;
}

static int regions_overlap(const uint8_t *a, uint64_t alen, const uint8_t *b, uint64_t blen) {
    return alen > 0 && blen > 0 && (uintptr_t)a < (uintptr_t)b + blen &&
           (uintptr_t)b < (uintptr_t)a + alen;
}

int engine_chunks_seal(const engine_key *key, const uint8_t *base_nonce, uint64_t first, size_t n,
                       const uint8_t *in, uint64_t len, uint8_t *out, int threads) {
    chunk_ctx c = {.key = key, .base_nonce = base_nonce, .first = first, .n = n, .in = in,
                   .out = out};
    int64_t rc;
    if (!run_ok(&c, len, CHUNK, 0)) return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (regions_overlap(in, len, out, len + (uint64_t)n * ENGINE_TAG_BYTES) ||
        regions_overlap(base_nonce, ENGINE_CHUNK_NONCE_BYTES, out,
                        len + (uint64_t)n * ENGINE_TAG_BYTES))
        return ENGINE_EOVERLAP;
    atomic_init(&c.failed, n);
    rc = engine_parallel_uniform(n, CHUNK, threads, seal_range, &c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}

int64_t engine_chunks_open(const engine_key *key, const uint8_t *base_nonce, uint64_t first,
                           size_t n, const uint8_t *in, uint64_t len, uint8_t *out, int threads) {
    chunk_ctx c = {.key = key, .base_nonce = base_nonce, .first = first, .n = n, .in = in,
                   .out = out};
    uint64_t plain;
    size_t failed;
    int64_t rc;
    if (!run_ok(&c, len, SEALED, ENGINE_TAG_BYTES)) return ENGINE_EINVAL;
    if (n == 0) return 0;
    plain = len - (uint64_t)n * ENGINE_TAG_BYTES;
    if (regions_overlap(in, len, out, plain) ||
        regions_overlap(base_nonce, ENGINE_CHUNK_NONCE_BYTES, out, plain))
        return ENGINE_EOVERLAP;
    atomic_init(&c.failed, n);
    rc = engine_parallel_uniform(n, CHUNK, threads, open_range, &c);
    failed = atomic_load(&c.failed);
    /* Nothing from the first failed chunk on may be used: not the failed chunk's unverified
     * plaintext, and not the later chunks that did authenticate (or all of it, on an error). */
    if (rc < 0) failed = 0;
    if (failed < n) engine_wipe(out + failed * CHUNK, (size_t)(plain - failed * CHUNK));
    return rc < 0 ? rc : (int64_t)failed;
}
