/* Dispatcher: backend choice, key handles, single-message calls and the threaded batch loop. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "backend.h"

/* A record costs about as much as this many bytes of payload (a 64-byte record takes ~70 ns with
 * ipsec-mb, ~12 bytes/ns): used to split batches of small records evenly across threads. */
#define RECORD_WEIGHT 768
/* Below this much work per thread, starting a thread costs more than it saves. */
#define MIN_THREAD_WEIGHT (256 * 1024)
#define MAX_THREADS 256

static uint8_t g_empty[1]; /* stands in for NULL on empty input; never written */

int engine_ct_differ(const uint8_t *a, const uint8_t *b, size_t n) {
    return CRYPTO_memcmp(a, b, n) != 0;
}

void engine_wipe(void *p, size_t n) { OPENSSL_cleanse(p, n); }

static const engine_backend_ops *ops_for(int backend) {
    switch (backend) {
#ifdef ENGINE_HAVE_IPSECMB
    case ENGINE_BACKEND_IPSECMB: return &engine_ipsecmb_ops;
#endif
    case ENGINE_BACKEND_OPENSSL: return &engine_openssl_ops;
    default: return NULL;
    }
}

int engine_backend_available(int backend) {
    const engine_backend_ops *ops = ops_for(backend);
    return ops != NULL && ops->available();
}

int engine_backend_default(void) {
    return engine_backend_available(ENGINE_BACKEND_IPSECMB) ? ENGINE_BACKEND_IPSECMB
                                                            : ENGINE_BACKEND_OPENSSL;
}

const char *engine_backend_name(int backend) {
    switch (backend) {
    case ENGINE_BACKEND_IPSECMB: return "ipsec-mb";
    case ENGINE_BACKEND_OPENSSL: return "openssl";
    default: return "unknown";
    }
}

const char *engine_backend_version(int backend) {
    const engine_backend_ops *ops = ops_for(backend);
    return ops == NULL ? "" : ops->version();
}

const char *engine_backend_isa(int backend) {
    const engine_backend_ops *ops = ops_for(backend);
    return ops == NULL || !ops->available() ? "none" : ops->isa();
}

int engine_key_new(engine_key **out, int backend, const uint8_t *raw) {
    engine_key *key;
    int rc;
    if (out == NULL || raw == NULL) return ENGINE_EINVAL;
    *out = NULL;
    if (backend == ENGINE_BACKEND_AUTO) backend = engine_backend_default();
    if (!engine_backend_available(backend)) return ENGINE_EBACKEND;
    key = calloc(1, sizeof(*key));
    if (key == NULL) return ENGINE_ENOMEM;
    key->ops = ops_for(backend);
    key->backend = backend;
    if ((rc = key->ops->key_init(key, raw)) != ENGINE_OK) {
        free(key);
        return rc;
    }
    memcpy(key->raw, raw, ENGINE_KEY_BYTES); /* for engine_key_derive; wiped by engine_key_free */
    *out = key;
    return ENGINE_OK;
}

void engine_key_free(engine_key *key) {
    if (key == NULL) return;
    key->ops->key_wipe(key);
    engine_wipe(key, sizeof(*key));
    free(key);
}

int engine_key_backend(const engine_key *key) { return key == NULL ? -1 : key->backend; }

static int nonce_ok(const uint8_t *nonce, size_t nonce_len) {
    return nonce != NULL && nonce_len >= ENGINE_NONCE_MIN_BYTES && nonce_len <= ENGINE_NONCE_MAX_BYTES;
}

static const uint8_t *nonnull(const uint8_t *p) { return p == NULL ? g_empty : p; }
static uint8_t *nonnull_out(uint8_t *p) { return p == NULL ? g_empty : p; }

int engine_seal(const engine_key *key, uint8_t *out, uint8_t *tag, const uint8_t *in, uint64_t len,
                const uint8_t *nonce, size_t nonce_len, const uint8_t *aad, uint64_t aad_len) {
    engine_worker w;
    int rc;
    if (key == NULL || tag == NULL || !nonce_ok(nonce, nonce_len) || len > ENGINE_MESSAGE_MAX_BYTES ||
        (len > 0 && (in == NULL || out == NULL)) || (aad_len > 0 && aad == NULL))
        return ENGINE_EINVAL;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    rc = key->ops->seal(key, &w, nonnull_out(out), tag, nonnull(in), len, nonce,
                        nonce_len, nonnull(aad), aad_len);
    key->ops->worker_free(&w);
    return rc;
}

int engine_open(const engine_key *key, uint8_t *out, const uint8_t *in, uint64_t len,
                const uint8_t *tag, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                uint64_t aad_len) {
    engine_worker w;
    int rc;
    if (key == NULL || tag == NULL || !nonce_ok(nonce, nonce_len) || len > ENGINE_MESSAGE_MAX_BYTES ||
        (len > 0 && (in == NULL || out == NULL)) || (aad_len > 0 && aad == NULL))
        return ENGINE_EINVAL;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    rc = key->ops->open(key, &w, nonnull_out(out), nonnull(in), len, tag, nonce,
                        nonce_len, nonnull(aad), aad_len);
    key->ops->worker_free(&w);
    if (rc != ENGINE_OK && len > 0) engine_wipe(out, (size_t)len); /* never unverified plaintext */
    return rc;
}

/* ---- running a batch on threads ----
 * The records are cut into chunks of about equal weight (bytes plus a per-record cost), several
 * per thread, and the threads take chunks in turn from a shared counter. On a machine whose cores
 * are shared (a VM whose other vCPU is often busy elsewhere), a thread that does not get to run
 * leaves its chunks to the others instead of holding up the whole call, so asking for more
 * threads costs little even when they cannot run. */

#define CHUNKS_PER_THREAD 8

typedef struct shared_work {
    engine_range_fn fn;
    void *ctx;
    const int64_t *offsets;
    size_t n, nchunks;
    uint64_t total;
    atomic_size_t next;
    atomic_int stop;
} shared_work;

typedef struct worker_job {
    shared_work *work;
    int64_t result;
} worker_job;

static uint64_t weight_at(const int64_t *offsets, size_t j) {
    return (offsets == NULL ? 0 : (uint64_t)(offsets[j] - offsets[0])) + (uint64_t)j * RECORD_WEIGHT;
}

/* First record index whose cumulative weight reaches target. */
static size_t split_point(const int64_t *offsets, size_t n, uint64_t target) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (weight_at(offsets, mid) < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The first record of chunk c (the same answer for both chunks that share the boundary). */
static size_t chunk_start(const shared_work *w, size_t c) {
    if (c == 0) return 0;
    if (c >= w->nchunks) return w->n;
    return split_point(w->offsets, w->n, w->total / w->nchunks * c);
}

static void *run_chunks(void *arg) {
    worker_job *job = (worker_job *)arg;
    shared_work *w = job->work;
    while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
        const size_t c = atomic_fetch_add(&w->next, 1);
        size_t begin, end;
        int64_t r;
        if (c >= w->nchunks) break;
        begin = chunk_start(w, c);
        end = chunk_start(w, c + 1);
        if (begin == end) continue;
        r = w->fn(w->ctx, begin, end);
        if (r < 0) {
            job->result = r;
            atomic_store(&w->stop, 1);
            break;
        }
        job->result += r;
    }
    return NULL;
}

int64_t engine_parallel(size_t n, const int64_t *offsets, int threads, engine_range_fn fn,
                        void *ctx) {
    worker_job jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    shared_work work = {.fn = fn, .ctx = ctx, .offsets = offsets, .n = n,
                        .total = weight_at(offsets, n)};
    size_t t, nt, started = 0;
    int64_t sum = 0;
    int rc = ENGINE_OK;

    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    nt = (size_t)threads;
    if (work.total / MIN_THREAD_WEIGHT < nt) nt = (size_t)(work.total / MIN_THREAD_WEIGHT);
    if (nt > n) nt = n;
    if (nt < 1) nt = 1;
    work.nchunks = nt == 1 ? 1 : nt * CHUNKS_PER_THREAD;
    if (work.nchunks > work.total / MIN_THREAD_WEIGHT) work.nchunks = work.total / MIN_THREAD_WEIGHT;
    if (work.nchunks > n) work.nchunks = n;
    if (work.nchunks < nt) work.nchunks = nt;
    atomic_init(&work.next, 0);
    atomic_init(&work.stop, 0);
    for (t = 0; t < nt; t++) {
        jobs[t].work = &work;
        jobs[t].result = 0;
    }
    /* Workers 1..nt-1 on new threads, worker 0 on the calling thread. */
    for (t = 1; t < nt; t++) {
        if (pthread_create(&tids[t], NULL, run_chunks, &jobs[t]) != 0) {
            rc = ENGINE_ETHREAD;
            atomic_store(&work.stop, 1);
            break;
        }
        started = t;
    }
    if (rc == ENGINE_OK) run_chunks(&jobs[0]);
    for (t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    if (rc != ENGINE_OK) return rc;
    for (t = 0; t < nt; t++) {
        if (jobs[t].result < 0) return jobs[t].result;
        sum += jobs[t].result;
    }
    return sum;
}

/* ---- batch seal/open, in two layouts ----
 * split: record i's ciphertext at out + (offsets[i] - offsets[0]), nonce and tag in arrays;
 * token: header || nonce || ciphertext || tag, one after the other, starting at a token offset. */

typedef struct crypt_ctx {
    const engine_key *key;
    int seal;
    int token; /* layout */
    const uint8_t *in;
    const uint8_t *const *ins; /* split layout, sealing from separate buffers: record i's input */
    const int64_t *offsets;
    uint8_t *out;
    uint8_t *const *outs;      /* split layout, opening into separate buffers: record i's output */
    const int64_t *out_starts; /* token layout: where each token (seal) / plaintext (open) starts */
    uint8_t *nonces;           /* split layout, and the freshly drawn nonces of token sealing */
    size_t nonce_len;
    uint8_t *tags;
    const uint8_t *header; /* token sealing: written before each nonce */
    size_t header_len;
    int header_is_aad; /* token layout: the AAD starts with the header (the token's own, opening) */
    const uint8_t *aad;
    const int64_t *aad_offsets;
    uint64_t aad_len;
    uint8_t *failed;
} crypt_ctx;

/* header || aad in a growing scratch buffer (only when both are present). */
static const uint8_t *joined_aad(uint8_t **scratch, size_t *cap, const uint8_t *header, size_t hl,
                                 const uint8_t *aad, uint64_t aad_len) {
    if ((uint64_t)*cap < hl + aad_len) {
        uint8_t *grown = realloc(*scratch, hl + aad_len);
        if (grown == NULL) return NULL;
        *scratch = grown;
        *cap = hl + aad_len;
    }
    memcpy(*scratch, header, hl);
    memcpy(*scratch + hl, aad, aad_len);
    return *scratch;
}

static int64_t crypt_range(void *arg, size_t begin, size_t end) {
    const crypt_ctx *c = (const crypt_ctx *)arg;
    const engine_key *key = c->key;
    const int64_t base = c->offsets[0];
    const size_t nl = c->nonce_len, hl = c->header_len;
    uint8_t *scratch = NULL;
    size_t scratch_cap = 0;
    engine_worker w;
    int64_t nfailed = 0;
    int rc = ENGINE_OK;
    size_t i;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    for (i = begin; i < end; i++) {
        const uint8_t *rec = nonnull(c->ins != NULL ? c->ins[i] : c->in + c->offsets[i]);
        const uint64_t rec_len = (uint64_t)(c->offsets[i + 1] - c->offsets[i]);
        const uint8_t *src, *nonce, *header = c->header, *aad = c->aad;
        uint8_t *dst, *tag;
        uint64_t len, aad_len = c->aad_len;
        if (!c->token) {
            src = rec;
            len = rec_len;
            dst = nonnull_out(c->outs != NULL ? c->outs[i] : c->out + (c->offsets[i] - base));
            nonce = c->nonces + i * nl;
            tag = c->tags + i * ENGINE_TAG_BYTES;
        } else if (c->seal) {
            uint8_t *tok = c->out + c->out_starts[i];
            memcpy(tok, c->header, hl);
            memcpy(tok + hl, c->nonces + i * nl, nl);
            src = rec;
            len = rec_len;
            nonce = tok + hl;
            dst = tok + hl + nl;
            tag = dst + len;
        } else {
            len = rec_len - hl - nl - ENGINE_TAG_BYTES; /* sizes were checked before */
            header = rec;
            nonce = rec + hl;
            src = rec + hl + nl;
            tag = (uint8_t *)src + len;
            dst = nonnull_out(c->out + c->out_starts[i]);
        }
        if (c->aad_offsets != NULL) {
            aad = c->aad + c->aad_offsets[i];
            aad_len = (uint64_t)(c->aad_offsets[i + 1] - c->aad_offsets[i]);
        }
        if (c->token && c->header_is_aad) {
            if (aad_len == 0) {
                aad = header;
                aad_len = hl;
            } else if ((aad = joined_aad(&scratch, &scratch_cap, header, hl, aad, aad_len)) == NULL) {
                rc = ENGINE_ENOMEM;
                break;
            } else {
                aad_len += hl;
            }
        }
        aad = nonnull(aad);
        if (c->seal) {
            rc = key->ops->seal(key, &w, dst, tag, src, len, nonce, nl, aad, aad_len);
        } else {
            rc = key->ops->open(key, &w, dst, src, len, tag, nonce, nl, aad, aad_len);
            if (rc != ENGINE_OK && len > 0) {
                /* Never leave unverified plaintext. In place, GCM's counter mode run again over
                 * it restores the ciphertext exactly (the tag it computes is thrown away). */
                uint8_t scratch_tag[ENGINE_TAG_BYTES];
                if (dst != src || key->ops->seal(key, &w, dst, scratch_tag, dst, len, nonce, nl,
                                                 aad, aad_len) != ENGINE_OK)
                    engine_wipe(dst, (size_t)len);
            }
            if (rc == ENGINE_EAUTH) {
                c->failed[i] = 1;
                nfailed++;
                rc = ENGINE_OK;
                continue;
            }
            c->failed[i] = 0;
        }
        if (rc != ENGINE_OK) break;
    }
    free(scratch);
    key->ops->worker_free(&w);
    return rc != ENGINE_OK ? rc : nfailed;
}

/* ---- aliasing between a call's buffers ---- */

typedef struct region {
    const uint8_t *p;
    uint64_t len;
} region;

static int share_bytes(region a, region b) {
    const uintptr_t x = (uintptr_t)a.p, y = (uintptr_t)b.p;
    return a.len > 0 && b.len > 0 && x < y + b.len && y < x + a.len;
}

/* 0 when no written region shares a byte with any other region, else ENGINE_EOVERLAP. The first
 * written region may coincide exactly with the first read region (a batch sealed or opened in
 * place): each record is then read and written at the same address by one thread. */
static int disjoint(const region *writes, size_t nw, const region *reads, size_t nr) {
    size_t i, j;
    for (i = 0; i < nw; i++) {
        for (j = 0; j < nr; j++) {
            if (i == 0 && j == 0 && writes[0].p == reads[0].p && writes[0].len == reads[0].len)
                continue;
            if (share_bytes(writes[i], reads[j])) return ENGINE_EOVERLAP;
        }
        for (j = i + 1; j < nw; j++)
            if (share_bytes(writes[i], writes[j])) return ENGINE_EOVERLAP;
    }
    return ENGINE_OK;
}

static region aad_region(size_t n, const uint8_t *aad, const int64_t *aad_offsets,
                         uint64_t aad_len) {
    region r = {aad, aad_len};
    if (aad_offsets != NULL) {
        r.p = aad == NULL ? NULL : aad + aad_offsets[0];
        r.len = (uint64_t)(aad_offsets[n] - aad_offsets[0]);
    }
    if (r.p == NULL) r.len = 0;
    return r;
}

static int batch_args_ok(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                         const uint8_t *out, const uint8_t *nonces, size_t nonce_len,
                         const uint8_t *tags, const uint8_t *aad, const int64_t *aad_offsets,
                         uint64_t aad_len) {
    if (key == NULL || offsets == NULL) return 0;
    if (n == 0) return 1;
    if (nonces == NULL || tags == NULL || nonce_len < ENGINE_NONCE_MIN_BYTES ||
        nonce_len > ENGINE_NONCE_MAX_BYTES)
        return 0;
    if (offsets[n] > offsets[0] && (in == NULL || out == NULL)) return 0;
    if (aad_offsets == NULL && aad_len > 0 && aad == NULL) return 0;
    if (aad_offsets != NULL && aad_offsets[n] > aad_offsets[0] && aad == NULL) return 0;
    return 1;
}

/* The split layout's seal once the arguments are checked: nonces drawn (one CSPRNG call) when
 * the caller did not give them, then the records on threads. */
static int seal_split(crypt_ctx *c, size_t n, int fill_nonces, int threads) {
    int64_t rc;
    if (fill_nonces && engine_random(c->nonces, n * c->nonce_len) != ENGINE_OK)
        return ENGINE_ERANDOM;
    rc = engine_parallel(n, c->offsets, threads, crypt_range, c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}

int engine_seal_batch(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                      uint8_t *out, uint8_t *nonces, size_t nonce_len, int fill_nonces,
                      uint8_t *tags, const uint8_t *aad, const int64_t *aad_offsets,
                      uint64_t aad_len, int threads) {
    if (!batch_args_ok(key, n, in, offsets, out, nonces, nonce_len, tags, aad, aad_offsets, aad_len))
        return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    {
        const uint64_t bytes = (uint64_t)(offsets[n] - offsets[0]);
        const region data = {in == NULL ? NULL : in + offsets[0], bytes},
                     nonce_r = {nonces, (uint64_t)n * nonce_len},
                     tag_r = {tags, (uint64_t)n * ENGINE_TAG_BYTES},
                     off_r = {(const uint8_t *)offsets, (uint64_t)(n + 1) * sizeof(int64_t)},
                     aad_r = aad_region(n, aad, aad_offsets, aad_len);
        const region none = {NULL, 0};
        const region writes[] = {{out, bytes}, tag_r, fill_nonces ? nonce_r : none};
        const region reads[] = {data, fill_nonces ? none : nonce_r, aad_r, off_r};
        if (disjoint(writes, 3, reads, 4) != ENGINE_OK) return ENGINE_EOVERLAP;
    }
    crypt_ctx c = {.key = key, .seal = 1, .in = in, .offsets = offsets, .out = out,
                   .nonces = nonces, .nonce_len = nonce_len, .tags = tags, .aad = aad,
                   .aad_offsets = aad_offsets, .aad_len = aad_len};
    return seal_split(&c, n, fill_nonces, threads);
}

int64_t engine_open_batch(const engine_key *key, size_t n, const uint8_t *in,
                          const int64_t *offsets, uint8_t *out, const uint8_t *nonces,
                          size_t nonce_len, const uint8_t *tags, const uint8_t *aad,
                          const int64_t *aad_offsets, uint64_t aad_len, uint8_t *failed,
                          int threads) {
    if (!batch_args_ok(key, n, in, offsets, out, nonces, nonce_len, tags, aad, aad_offsets,
                       aad_len) ||
        (n > 0 && failed == NULL))
        return ENGINE_EINVAL;
    if (n == 0) return 0;
    {
        const uint64_t bytes = (uint64_t)(offsets[n] - offsets[0]);
        const region data = {in == NULL ? NULL : in + offsets[0], bytes},
                     nonce_r = {nonces, (uint64_t)n * nonce_len},
                     tag_r = {tags, (uint64_t)n * ENGINE_TAG_BYTES},
                     off_r = {(const uint8_t *)offsets, (uint64_t)(n + 1) * sizeof(int64_t)},
                     aad_r = aad_region(n, aad, aad_offsets, aad_len);
        const region writes[] = {{out, bytes}, {failed, n}};
        const region reads[] = {data, nonce_r, tag_r, aad_r, off_r};
        if (disjoint(writes, 2, reads, 5) != ENGINE_OK) return ENGINE_EOVERLAP;
    }
    crypt_ctx c = {.key = key, .in = in, .offsets = offsets, .out = out,
                   .nonces = (uint8_t *)nonces, .nonce_len = nonce_len, .tags = (uint8_t *)tags,
                   .aad = aad, .aad_offsets = aad_offsets, .aad_len = aad_len, .failed = failed};
    return engine_parallel(n, offsets, threads, crypt_range, &c);
}

int engine_seal_batch_each(const engine_key *key, size_t n, const uint8_t *const *ins,
                           const int64_t *offsets, uint8_t *out, uint8_t *nonces, size_t nonce_len,
                           int fill_nonces, uint8_t *tags, const uint8_t *aad,
                           const int64_t *aad_offsets, uint64_t aad_len, int threads) {
    size_t i;
    if (ins == NULL || offsets == NULL || key == NULL ||
        !batch_args_ok(key, n, (const uint8_t *)ins, offsets, out, nonces, nonce_len, tags, aad,
                       aad_offsets, aad_len))
        return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    {
        const uint64_t bytes = (uint64_t)(offsets[n] - offsets[0]);
        const region none = {NULL, 0};
        const region writes[] = {{out, bytes}, {tags, (uint64_t)n * ENGINE_TAG_BYTES},
                                 fill_nonces ? (region){nonces, (uint64_t)n * nonce_len} : none};
        const region reads[] = {fill_nonces ? none : (region){nonces, (uint64_t)n * nonce_len},
                                aad_region(n, aad, aad_offsets, aad_len),
                                {(const uint8_t *)offsets, (uint64_t)(n + 1) * sizeof(int64_t)}};
        if (disjoint(writes, 3, reads, 3) != ENGINE_OK) return ENGINE_EOVERLAP;
        for (i = 0; i < n; i++) {
            const region in_i = {ins[i], (uint64_t)(offsets[i + 1] - offsets[i])};
            if (in_i.len > 0 && in_i.p == NULL) return ENGINE_EINVAL;
            if (disjoint(writes, 3, &in_i, 1) != ENGINE_OK) return ENGINE_EOVERLAP;
        }
    }
    crypt_ctx c = {.key = key, .seal = 1, .ins = ins, .offsets = offsets, .out = out,
                   .nonces = nonces, .nonce_len = nonce_len, .tags = tags, .aad = aad,
                   .aad_offsets = aad_offsets, .aad_len = aad_len};
    return seal_split(&c, n, fill_nonces, threads);
}

int64_t engine_open_batch_each(const engine_key *key, size_t n, const uint8_t *in,
                               const int64_t *offsets, uint8_t *const *outs,
                               const uint8_t *nonces, size_t nonce_len, const uint8_t *tags,
                               const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                               uint8_t *failed, int threads) {
    size_t i;
    if (outs == NULL ||
        !batch_args_ok(key, n, in, offsets, (const uint8_t *)outs, nonces, nonce_len, tags, aad,
                       aad_offsets, aad_len) ||
        (n > 0 && failed == NULL))
        return ENGINE_EINVAL;
    if (n == 0) return 0;
    {
        const uint64_t bytes = (uint64_t)(offsets[n] - offsets[0]);
        const region reads[] = {{in == NULL ? NULL : in + offsets[0], bytes},
                                {nonces, (uint64_t)n * nonce_len},
                                {tags, (uint64_t)n * ENGINE_TAG_BYTES},
                                aad_region(n, aad, aad_offsets, aad_len)};
        for (i = 0; i < n; i++) {
            const region write = {outs[i], (uint64_t)(offsets[i + 1] - offsets[i])};
            if (write.len > 0 && write.p == NULL) return ENGINE_EINVAL;
            if (disjoint(&write, 1, reads, 4) != ENGINE_OK) return ENGINE_EOVERLAP;
        }
    }
    crypt_ctx c = {.key = key, .in = in, .offsets = offsets, .outs = outs,
                   .nonces = (uint8_t *)nonces, .nonce_len = nonce_len, .tags = (uint8_t *)tags,
                   .aad = aad, .aad_offsets = aad_offsets, .aad_len = aad_len, .failed = failed};
    return engine_parallel(n, offsets, threads, crypt_range, &c);
}

int engine_seal_tokens(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                       const uint8_t *header, size_t header_len, int header_is_aad,
                       size_t nonce_len, uint8_t *out, const int64_t *out_starts,
                       const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                       int threads) {
    uint8_t *nonces;
    int64_t rc;
    if (key == NULL || offsets == NULL || out_starts == NULL ||
        nonce_len < ENGINE_NONCE_MIN_BYTES || nonce_len > ENGINE_NONCE_MAX_BYTES ||
        (header_len > 0 && header == NULL) || (aad_offsets == NULL && aad_len > 0 && aad == NULL))
        return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (out == NULL || (offsets[n] > offsets[0] && in == NULL)) return ENGINE_EINVAL;
    nonces = malloc(n * nonce_len);
    if (nonces == NULL) return ENGINE_ENOMEM;
    if (engine_random(nonces, n * nonce_len) != ENGINE_OK) {
        free(nonces);
        return ENGINE_ERANDOM;
    }
    crypt_ctx c = {.key = key, .seal = 1, .token = 1, .in = in, .offsets = offsets, .out = out,
                   .out_starts = out_starts, .nonces = nonces, .nonce_len = nonce_len,
                   .header = header, .header_len = header_len, .header_is_aad = header_is_aad,
                   .aad = aad, .aad_offsets = aad_offsets, .aad_len = aad_len};
    rc = engine_parallel(n, offsets, threads, crypt_range, &c);
    free(nonces); /* public once written into the tokens: no wipe needed */
    return rc < 0 ? (int)rc : ENGINE_OK;
}

int64_t engine_open_tokens(const engine_key *key, size_t n, const uint8_t *in,
                           const int64_t *offsets, size_t header_len, int header_is_aad,
                           size_t nonce_len, uint8_t *out, const int64_t *out_starts,
                           const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                           uint8_t *failed, int threads) {
    const uint8_t *first_out = NULL, *end_out = NULL;
    size_t i;
    if (key == NULL || offsets == NULL || out_starts == NULL || (n > 0 && failed == NULL) ||
        nonce_len < ENGINE_NONCE_MIN_BYTES || nonce_len > ENGINE_NONCE_MAX_BYTES ||
        (aad_offsets == NULL && aad_len > 0 && aad == NULL))
        return ENGINE_EINVAL;
    if (n == 0) return 0;
    if (in == NULL || out == NULL) return ENGINE_EINVAL;
    for (i = 0; i < n; i++) {
        const int64_t len = offsets[i + 1] - offsets[i] -
                            (int64_t)(header_len + nonce_len + ENGINE_TAG_BYTES);
        if (len < 0) return ENGINE_EINVAL;
        if (len > 0) {
            if (first_out == NULL || out + out_starts[i] < first_out) first_out = out + out_starts[i];
            if (out + out_starts[i] + len > end_out) end_out = out + out_starts[i] + len;
        }
    }
    {
        const region writes[] = {{first_out, (uint64_t)(end_out - first_out)}, {failed, n}};
        const region reads[] = {{in + offsets[0], (uint64_t)(offsets[n] - offsets[0])},
                                aad_region(n, aad, aad_offsets, aad_len),
                                {(const uint8_t *)offsets, (uint64_t)(n + 1) * sizeof(int64_t)}};
        if (disjoint(writes, 2, reads, 3) != ENGINE_OK) return ENGINE_EOVERLAP;
    }
    crypt_ctx c = {.key = key, .token = 1, .in = in, .offsets = offsets, .out = out,
                   .out_starts = out_starts, .nonce_len = nonce_len, .header_len = header_len,
                   .header_is_aad = header_is_aad, .aad = aad, .aad_offsets = aad_offsets,
                   .aad_len = aad_len, .failed = failed};
    return engine_parallel(n, offsets, threads, crypt_range, &c);
}

/* ---- the CSPRNG, safe across fork() ----
 * OpenSSL's RAND_bytes holds a lock of its DRBG while it runs; a child forked by another thread at
 * that moment inherits that lock taken and hangs on its first draw. So every draw holds g_rand,
 * and a pthread_atfork handler takes g_rand before fork: the fork waits for the draw in flight and
 * no new one starts until it is done. OpenSSL reseeds its DRBG in the child (it checks the pid).
 * Small draws (single-message nonces) come from a per-process pool refilled in bulk: one RAND_bytes
 * call per POOL_BYTES instead of one per nonce. The child discards the pool it inherited, so a
 * parent and its children never hand out the same bytes. */
#define POOL_BYTES 4096
#define POOL_MAX_DRAW 64

static pthread_mutex_t g_rand = PTHREAD_MUTEX_INITIALIZER;
static uint8_t g_pool[POOL_BYTES];
static size_t g_pool_left; /* unused bytes at the end of g_pool */
static pthread_once_t g_fork_once = PTHREAD_ONCE_INIT;

static void fork_prepare(void) { pthread_mutex_lock(&g_rand); }
static void fork_parent(void) { pthread_mutex_unlock(&g_rand); }

static void fork_child(void) {
    engine_wipe(g_pool, sizeof(g_pool));
    g_pool_left = 0;
    pthread_mutex_unlock(&g_rand);
}

static void fork_handlers(void) { pthread_atfork(fork_prepare, fork_parent, fork_child); }

/* RAND_bytes in steps its int length can express; the caller holds g_rand. */
static int draw_locked(uint8_t *buf, size_t len) {
    const size_t step = (size_t)1 << 30;
    while (len > 0) {
        size_t k = len < step ? len : step;
        if (RAND_bytes(buf, (int)k) != 1) return ENGINE_ERANDOM;
        buf += k;
        len -= k;
    }
    return ENGINE_OK;
}

int engine_random(uint8_t *buf, size_t len) {
    int rc = ENGINE_OK;
    if (buf == NULL && len > 0) return ENGINE_EINVAL;
    if (len == 0) return ENGINE_OK;
    pthread_once(&g_fork_once, fork_handlers);
    pthread_mutex_lock(&g_rand);
    if (len > POOL_MAX_DRAW) {
        rc = draw_locked(buf, len);
    } else {
        if (g_pool_left < len) {
            rc = draw_locked(g_pool, sizeof(g_pool));
            g_pool_left = rc == ENGINE_OK ? sizeof(g_pool) : 0;
        }
        if (rc == ENGINE_OK) {
            uint8_t *src = g_pool + sizeof(g_pool) - g_pool_left;
            memcpy(buf, src, len);
            engine_wipe(src, len); /* handed out once, never again (not even to a child) */
            g_pool_left -= len;
        }
    }
    pthread_mutex_unlock(&g_rand);
    return rc;
}
