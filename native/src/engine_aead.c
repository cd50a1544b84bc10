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

/* explicit_bzero: a memset the compiler may not drop. (OPENSSL_cleanse stores 8 bytes at a time:
 * on the per-message XAES key material, a tenth of a 64-byte message's time.) */
void engine_wipe(void *p, size_t n) { explicit_bzero(p, n); }

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

/* XAES-256-GCM's subkey: K1 = dbl(L), L = AES-256_K(0^128) (the CMAC subkey of NIST SP 800-38B,
 * doubling in GF(2^128) as a big-endian integer). */
static int xaes_subkey(engine_key *key) {
    static const uint8_t zeros[32];
    uint8_t l[32];
    engine_worker w;
    int rc, i;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    rc = key->ops->encrypt_blocks2(key, &w, l, zeros);
    key->ops->worker_free(&w);
    if (rc == ENGINE_OK) {
        for (i = 0; i < 15; i++) key->k1[i] = (uint8_t)(l[i] << 1 | l[i + 1] >> 7);
        key->k1[15] = (uint8_t)(l[15] << 1) ^ (uint8_t)(0x87 & -(l[0] >> 7));
    }
    engine_wipe(l, sizeof(l));
    return rc;
}

int engine_key_new_alg(engine_key **out, int backend, int algorithm, const uint8_t *raw) {
    engine_key *key;
    int rc;
    if (out == NULL || raw == NULL) return ENGINE_EINVAL;
    *out = NULL;
    if (algorithm != ENGINE_ALG_AES_GCM && algorithm != ENGINE_ALG_XAES_GCM) return ENGINE_EINVAL;
    if (backend == ENGINE_BACKEND_AUTO) backend = engine_backend_default();
    if (!engine_backend_available(backend)) return ENGINE_EBACKEND;
    key = calloc(1, sizeof(*key));
    if (key == NULL) return ENGINE_ENOMEM;
    key->ops = ops_for(backend);
    key->backend = backend;
    key->algorithm = algorithm;
    if ((rc = key->ops->key_init(key, raw)) != ENGINE_OK) {
        free(key);
        return rc;
    }
    if (algorithm == ENGINE_ALG_XAES_GCM && (rc = xaes_subkey(key)) != ENGINE_OK) {
        engine_key_free(key);
        return rc;
    }
    memcpy(key->raw, raw, ENGINE_KEY_BYTES); /* for engine_key_derive; wiped by engine_key_free */
    *out = key;
    return ENGINE_OK;
}

int engine_key_new(engine_key **out, int backend, const uint8_t *raw) {
    return engine_key_new_alg(out, backend, ENGINE_ALG_AES_GCM, raw);
}

void engine_key_free(engine_key *key) {
    if (key == NULL) return;
    key->ops->key_wipe(key);
    engine_wipe(key, sizeof(*key));
    free(key);
}

int engine_key_backend(const engine_key *key) { return key == NULL ? -1 : key->backend; }

int engine_key_algorithm(const engine_key *key) { return key == NULL ? -1 : key->algorithm; }

static int nonce_len_ok(int algorithm, size_t nonce_len) {
    if (algorithm == ENGINE_ALG_XAES_GCM) return nonce_len == ENGINE_XAES_NONCE_BYTES;
    return nonce_len >= ENGINE_NONCE_MIN_BYTES && nonce_len <= ENGINE_NONCE_MAX_BYTES;
}

static int nonce_ok(const engine_key *key, const uint8_t *nonce, size_t nonce_len) {
    return nonce != NULL && nonce_len_ok(key->algorithm, nonce_len);
}

/* XAES-256-GCM's message key for a 24-byte nonce: AES-256_K(M1 ^ K1) || AES-256_K(M2 ^ K1),
 * Mj = 00 0j 'X' 00 || nonce[0..12) (c2sp.org/XAES-256-GCM). */
static int xaes_message_key(const engine_key *key, engine_worker *w, const uint8_t *nonce,
                            uint8_t message_key[32]) {
    uint8_t m[32];
    uint64_t word, k1;
    int i, rc;
    m[0] = 0, m[1] = 1, m[2] = 'X', m[3] = 0;
    memcpy(m + 4, nonce, 12);
    memcpy(m + 16, m, 16);
    m[17] = 2;
    for (i = 0; i < 32; i += 8) { /* ^= K1, a word at a time */
        memcpy(&word, m + i, 8);
        memcpy(&k1, key->k1 + i % 16, 8);
        word ^= k1;
        memcpy(m + i, &word, 8);
    }
    rc = key->ops->encrypt_blocks2(key, w, message_key, m);
    engine_wipe(m, sizeof(m)); /* holds K1 */
    return rc;
}

/* Sets the worker up for one message and gives the AES-256-GCM nonce to use. AES-256-GCM: the
 * handle's key, the nonce as given. XAES-256-GCM: the message key, and nonce[12..24). */
static int message_setup(const engine_key *key, engine_worker *w, const uint8_t **nonce,
                         size_t *nonce_len, uint64_t len) {
    uint8_t message_key[32];
    int rc;
    if (key->algorithm != ENGINE_ALG_XAES_GCM) return ENGINE_OK;
    rc = xaes_message_key(key, w, *nonce, message_key);
    if (rc == ENGINE_OK) rc = key->ops->set_message_key(w, message_key, len);
    engine_wipe(message_key, sizeof(message_key));
    *nonce += 12;
    *nonce_len = 12;
    return rc;
}

static const uint8_t *nonnull(const uint8_t *p) { return p == NULL ? g_empty : p; }
static uint8_t *nonnull_out(uint8_t *p) { return p == NULL ? g_empty : p; }

int engine_seal(const engine_key *key, uint8_t *out, uint8_t *tag, const uint8_t *in, uint64_t len,
                const uint8_t *nonce, size_t nonce_len, const uint8_t *aad, uint64_t aad_len) {
    engine_worker w;
    int rc;
    if (key == NULL || tag == NULL || !nonce_ok(key, nonce, nonce_len) ||
        len > ENGINE_MESSAGE_MAX_BYTES || (len > 0 && (in == NULL || out == NULL)) ||
        (aad_len > 0 && aad == NULL))
        return ENGINE_EINVAL;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    if ((rc = message_setup(key, &w, &nonce, &nonce_len, len)) == ENGINE_OK)
        rc = key->ops->seal(key, &w, nonnull_out(out), tag, nonnull(in), len, nonce, nonce_len,
                            nonnull(aad), aad_len);
    key->ops->worker_free(&w);
    return rc;
}

int engine_open(const engine_key *key, uint8_t *out, const uint8_t *in, uint64_t len,
                const uint8_t *tag, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                uint64_t aad_len) {
    engine_worker w;
    int rc;
    if (key == NULL || tag == NULL || !nonce_ok(key, nonce, nonce_len) ||
        len > ENGINE_MESSAGE_MAX_BYTES || (len > 0 && (in == NULL || out == NULL)) ||
        (aad_len > 0 && aad == NULL))
        return ENGINE_EINVAL;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    if ((rc = message_setup(key, &w, &nonce, &nonce_len, len)) == ENGINE_OK)
        rc = key->ops->open(key, &w, nonnull_out(out), nonnull(in), len, tag, nonce, nonce_len,
                            nonnull(aad), aad_len);
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
    uint64_t record_bytes; /* without offsets: every record's size */
    size_t n, nchunks;
    uint64_t total;
    atomic_size_t next;
    atomic_int stop;
} shared_work;

typedef struct worker_job {
    shared_work *work;
    int64_t result;
} worker_job;

static uint64_t weight_at(const shared_work *w, size_t j) {
    return (w->offsets == NULL ? (uint64_t)j * w->record_bytes
                               : (uint64_t)(w->offsets[j] - w->offsets[0])) +
           (uint64_t)j * RECORD_WEIGHT;
}

/* First record index whose cumulative weight reaches target. */
static size_t split_point(const shared_work *w, uint64_t target) {
    size_t lo = 0, hi = w->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (weight_at(w, mid) < target)
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
    return split_point(w, w->total / w->nchunks * c);
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

static int64_t run_parallel(shared_work *work, int threads) {
    worker_job jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    size_t t, nt, started = 0;
    int64_t sum = 0;
    int rc = ENGINE_OK;

    work->total = weight_at(work, work->n);
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    nt = (size_t)threads;
    if (work->total / MIN_THREAD_WEIGHT < nt) nt = (size_t)(work->total / MIN_THREAD_WEIGHT);
    if (nt > work->n) nt = work->n;
    if (nt < 1) nt = 1;
    work->nchunks = nt == 1 ? 1 : nt * CHUNKS_PER_THREAD;
    if (work->nchunks > work->total / MIN_THREAD_WEIGHT) work->nchunks = work->total / MIN_THREAD_WEIGHT;
    if (work->nchunks > work->n) work->nchunks = work->n;
    if (work->nchunks < nt) work->nchunks = nt;
    atomic_init(&work->next, 0);
    atomic_init(&work->stop, 0);
    for (t = 0; t < nt; t++) {
        jobs[t].work = work;
        jobs[t].result = 0;
    }
    /* Workers 1..nt-1 on new threads, worker 0 on the calling thread. */
    for (t = 1; t < nt; t++) {
        if (pthread_create(&tids[t], NULL, run_chunks, &jobs[t]) != 0) {
            rc = ENGINE_ETHREAD;
            atomic_store(&work->stop, 1);
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

int64_t engine_parallel(size_t n, const int64_t *offsets, int threads, engine_range_fn fn,
                        void *ctx) {
    shared_work work = {.fn = fn, .ctx = ctx, .offsets = offsets, .n = n};
    return run_parallel(&work, threads);
}

int64_t engine_parallel_uniform(size_t n, uint64_t record_bytes, int threads, engine_range_fn fn,
                                void *ctx) {
    shared_work work = {.fn = fn, .ctx = ctx, .record_bytes = record_bytes, .n = n};
    return run_parallel(&work, threads);
}

/* ---- batch seal/open, in two layouts ----
 * split: record i's ciphertext at out + (offsets[i] - offsets[0]), nonce and tag in arrays;
 * token: header || nonce || ciphertext || tag, one after the other, starting at a token offset. */

typedef struct crypt_ctx {
    const engine_key *key;
    const uint8_t *keys; /* a raw key per record (with backend and algorithm) instead of `key` */
    int backend, algorithm;
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

/* A growing scratch buffer of one thread: header || aad, when a token's AAD has both parts. */
typedef struct scratch {
    uint8_t *p;
    size_t cap;
} scratch;

static const uint8_t *joined_aad(scratch *s, const uint8_t *header, size_t hl, const uint8_t *aad,
                                 uint64_t aad_len) {
    if ((uint64_t)s->cap < hl + aad_len) {
        uint8_t *grown = realloc(s->p, hl + aad_len);
        if (grown == NULL) return NULL;
        s->p = grown;
        s->cap = hl + aad_len;
    }
    memcpy(s->p, header, hl);
    memcpy(s->p + hl, aad, aad_len);
    return s->p;
}

/* Where record i's input, output, nonce, tag and AAD are (the AAD joined to a token's header in
 * sc when it has both parts). Returns ENGINE_OK or ENGINE_ENOMEM. */
static int view_record(const crypt_ctx *c, size_t i, scratch *sc, engine_message *v) {
    const size_t hl = c->header_len;
    const uint8_t *rec = nonnull(c->ins != NULL ? c->ins[i] : c->in + c->offsets[i]);
    const uint64_t rec_len = (uint64_t)(c->offsets[i + 1] - c->offsets[i]);
    const uint8_t *header = c->header;
    v->nonce_len = c->nonce_len;
    v->aad = c->aad;
    v->aad_len = c->aad_len;
    if (!c->token) {
        v->in = rec;
        v->len = rec_len;
        v->out = nonnull_out(c->outs != NULL ? c->outs[i] : c->out + (c->offsets[i] - c->offsets[0]));
        v->nonce = c->nonces + i * v->nonce_len;
        v->tag = c->tags + i * ENGINE_TAG_BYTES;
    } else if (c->seal) {
        uint8_t *tok = c->out + c->out_starts[i];
        memcpy(tok, c->header, hl);
        memcpy(tok + hl, c->nonces + i * v->nonce_len, v->nonce_len);
        v->in = rec;
        v->len = rec_len;
        v->nonce = tok + hl;
        v->out = tok + hl + v->nonce_len;
        v->tag = v->out + v->len;
    } else {
        v->len = rec_len - hl - v->nonce_len - ENGINE_TAG_BYTES; /* sizes were checked before */
        header = rec;
        v->nonce = rec + hl;
        v->in = rec + hl + v->nonce_len;
        v->tag = (uint8_t *)v->in + v->len;
        v->out = nonnull_out(c->out + c->out_starts[i]);
    }
    if (c->aad_offsets != NULL) {
        v->aad = c->aad + c->aad_offsets[i];
        v->aad_len = (uint64_t)(c->aad_offsets[i + 1] - c->aad_offsets[i]);
    }
    if (c->token && c->header_is_aad) {
        if (v->aad_len == 0) {
            v->aad = header;
            v->aad_len = hl;
        } else if ((v->aad = joined_aad(sc, header, hl, v->aad, v->aad_len)) == NULL) {
            return ENGINE_ENOMEM;
        } else {
            v->aad_len += hl;
        }
    }
    v->aad = nonnull(v->aad);
    return ENGINE_OK;
}

/* After a record failed to open: never leave unverified plaintext. In place, GCM's counter mode
 * run again over it restores the ciphertext exactly (the tag it computes is thrown away). */
static void discard_unverified(const engine_key *key, engine_worker *w, const engine_message *v) {
    const uint8_t *nonce = v->nonce;
    size_t nl = v->nonce_len;
    uint8_t scratch_tag[ENGINE_TAG_BYTES];
    if (v->len == 0) return;
    if (v->out != v->in || message_setup(key, w, &nonce, &nl, v->len) != ENGINE_OK ||
        key->ops->seal(key, w, v->out, scratch_tag, v->out, v->len, nonce, nl, v->aad,
                       v->aad_len) != ENGINE_OK)
        engine_wipe(v->out, (size_t)v->len);
}

/* Seals or opens record i, found at v, with `key` on worker w. Returns ENGINE_OK, ENGINE_EAUTH
 * (a failed record: marked in c->failed, its output zeroed or, in place, its ciphertext
 * restored) or another ENGINE_E* code. */
static int crypt_viewed(const crypt_ctx *c, const engine_key *key, engine_worker *w, size_t i,
                        const engine_message *v) {
    const uint8_t *nonce = v->nonce;
    size_t nl = v->nonce_len;
    int rc;
    if ((rc = message_setup(key, w, &nonce, &nl, v->len)) != ENGINE_OK) return rc;
    if (c->seal)
        return key->ops->seal(key, w, v->out, v->tag, v->in, v->len, nonce, nl, v->aad, v->aad_len);
    rc = key->ops->open(key, w, v->out, v->in, v->len, v->tag, nonce, nl, v->aad, v->aad_len);
    if (rc != ENGINE_OK) discard_unverified(key, w, v);
    c->failed[i] = rc == ENGINE_EAUTH;
    return rc;
}

/* crypt_viewed for record i, wherever it is. */
static int crypt_record(const crypt_ctx *c, const engine_key *key, engine_worker *w, size_t i,
                        scratch *sc) {
    engine_message v;
    int rc = view_record(c, i, sc, &v);
    return rc != ENGINE_OK ? rc : crypt_viewed(c, key, w, i, &v);
}

/* Records i and i + 1 as crypt_record does, through the backend's xaes_pair when both are short
 * enough; returns how many failed to open, or a negative ENGINE_E* code. */
static int64_t crypt_record_pair(const crypt_ctx *c, const engine_key *key, engine_worker *w,
                                 size_t i, scratch sc[2]) {
    engine_message v[2];
    uint8_t computed[2][ENGINE_TAG_BYTES];
    const size_t max = ENGINE_XAES_PAIR_MAX_BYTES;
    int64_t nfailed = 0;
    int j, rc;
    for (j = 0; j < 2; j++)
        if ((rc = view_record(c, i + j, &sc[j], &v[j])) != ENGINE_OK) return rc;
    if (v[0].len > max || v[1].len > max || v[0].aad_len > max || v[1].aad_len > max) {
        for (j = 0; j < 2; j++) {
            rc = crypt_viewed(c, key, w, i + j, &v[j]);
            if (rc == ENGINE_EAUTH) nfailed++;
            else if (rc != ENGINE_OK) return rc;
        }
        return nfailed;
    }
    key->ops->xaes_pair(key, c->seal, v, computed);
    if (c->seal) return 0;
    for (j = 0; j < 2; j++) {
        const int failed = engine_ct_differ(computed[j], v[j].tag, ENGINE_TAG_BYTES);
        if (failed) discard_unverified(key, w, &v[j]);
        c->failed[i + j] = (uint8_t)failed;
        nfailed += failed;
    }
    engine_wipe(computed, sizeof(computed)); /* for a forged record: the tag it should have had */
    return nfailed;
}

static int64_t crypt_range(void *arg, size_t begin, size_t end) {
    const crypt_ctx *c = (const crypt_ctx *)arg;
    const engine_key *key = c->key;
    const int pairs = key->algorithm == ENGINE_ALG_XAES_GCM && key->ops->xaes_pair != NULL;
    scratch sc[2] = {{NULL, 0}, {NULL, 0}};
    engine_worker w;
    int64_t nfailed = 0;
    int rc = ENGINE_OK;
    size_t i;
    if ((rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return rc;
    for (i = begin; i < end; i++) {
        if (pairs && i + 1 < end) {
            const int64_t n = crypt_record_pair(c, key, &w, i++, sc);
            if (n < 0) {
                rc = (int)n;
                break;
            }
            nfailed += n;
            continue;
        }
        rc = crypt_record(c, key, &w, i, &sc[0]);
        if (rc == ENGINE_EAUTH) {
            nfailed++;
            rc = ENGINE_OK;
        }
        if (rc != ENGINE_OK) break;
    }
    free(sc[0].p);
    free(sc[1].p);
    key->ops->worker_free(&w);
    return rc != ENGINE_OK ? rc : nfailed;
}

/* As crypt_range, with a key handle made for each record from c->keys. */
static int64_t crypt_range_keys(void *arg, size_t begin, size_t end) {
    const crypt_ctx *c = (const crypt_ctx *)arg;
    scratch sc = {NULL, 0};
    int64_t nfailed = 0;
    int rc = ENGINE_OK;
    size_t i;
    for (i = begin; i < end && rc == ENGINE_OK; i++) {
        engine_key *key;
        engine_worker w;
        rc = engine_key_new_alg(&key, c->backend, c->algorithm, c->keys + i * ENGINE_KEY_BYTES);
        if (rc != ENGINE_OK) break;
        if ((rc = key->ops->worker_init(key, &w)) == ENGINE_OK) {
            rc = crypt_record(c, key, &w, i, &sc);
            key->ops->worker_free(&w);
        }
        engine_key_free(key);
        if (rc == ENGINE_EAUTH) {
            nfailed++;
            rc = ENGINE_OK;
        }
    }
    free(sc.p);
    return rc != ENGINE_OK ? rc : nfailed;
}

/* ---- aliasing between a call's buffers ---- */

typedef struct region {
    const uint8_t *p;
    uint64_t len;
} region;

static int share_bytes(region a, region b) {
    const uintptr_t x = (uintptr_t)a.p, y = (uintptr_t)b.p;
    return a.p != NULL && b.p != NULL && a.len > 0 && b.len > 0 && x < y + b.len &&
           y < x + a.len;
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

static int algorithm_ok(int algorithm) {
    return algorithm == ENGINE_ALG_AES_GCM || algorithm == ENGINE_ALG_XAES_GCM;
}

static int batch_args_ok(int algorithm, size_t n, const uint8_t *in, const int64_t *offsets,
                         const uint8_t *out, const uint8_t *nonces, size_t nonce_len,
                         const uint8_t *tags, const uint8_t *aad, const int64_t *aad_offsets,
                         uint64_t aad_len) {
    if (offsets == NULL) return 0;
    if (n == 0) return 1;
    if (nonces == NULL || tags == NULL || !nonce_len_ok(algorithm, nonce_len)) return 0;
    if (offsets[n] > offsets[0] && (in == NULL || out == NULL)) return 0;
    if (aad_offsets == NULL && aad_len > 0 && aad == NULL) return 0;
    if (aad_offsets != NULL && aad_offsets[n] > aad_offsets[0] && aad == NULL) return 0;
    return 1;
}

/* The aliasing rule of the header for a split-layout batch (n > 0): sealing writes the outputs,
 * the tags and (fill_nonces) the nonces; opening writes the outputs and `failed`. `keys` (n keys,
 * or NULL) is read. ENGINE_OK or ENGINE_EOVERLAP. */
static int batch_disjoint(int seal, size_t n, const uint8_t *in, const int64_t *offsets,
                          const uint8_t *out, const uint8_t *nonces, size_t nonce_len,
                          int fill_nonces, const uint8_t *tags, const uint8_t *aad,
                          const int64_t *aad_offsets, uint64_t aad_len, const uint8_t *failed,
                          const uint8_t *keys) {
    const uint64_t bytes = (uint64_t)(offsets[n] - offsets[0]);
    const region data = {in == NULL ? NULL : in + offsets[0], bytes},
                 nonce_r = {nonces, (uint64_t)n * nonce_len},
                 tag_r = {tags, (uint64_t)n * ENGINE_TAG_BYTES},
                 off_r = {(const uint8_t *)offsets, (uint64_t)(n + 1) * sizeof(int64_t)},
                 aad_r = aad_region(n, aad, aad_offsets, aad_len),
                 key_r = {keys, keys == NULL ? 0 : (uint64_t)n * ENGINE_KEY_BYTES};
    const region none = {NULL, 0};
    if (seal) {
        const region writes[] = {{out, bytes}, tag_r, fill_nonces ? nonce_r : none};
        const region reads[] = {data, fill_nonces ? none : nonce_r, aad_r, off_r, key_r};
        return disjoint(writes, 3, reads, 5);
    } else {
        const region writes[] = {{out, bytes}, {failed, n}};
        const region reads[] = {data, nonce_r, tag_r, aad_r, off_r, key_r};
        return disjoint(writes, 2, reads, 6);
    }
}

int engine_seal_batch(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                      uint8_t *out, uint8_t *nonces, size_t nonce_len, int fill_nonces,
                      uint8_t *tags, const uint8_t *aad, const int64_t *aad_offsets,
                      uint64_t aad_len, int threads) {
    int64_t rc;
    if (key == NULL || !batch_args_ok(key->algorithm, n, in, offsets, out, nonces, nonce_len, tags,
                                      aad, aad_offsets, aad_len))
        return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (batch_disjoint(1, n, in, offsets, out, nonces, nonce_len, fill_nonces, tags, aad,
                       aad_offsets, aad_len, NULL, NULL) != ENGINE_OK)
        return ENGINE_EOVERLAP;
    if (fill_nonces && engine_random(nonces, n * nonce_len) != ENGINE_OK) return ENGINE_ERANDOM;
    crypt_ctx c = {.key = key, .seal = 1, .in = in, .offsets = offsets, .out = out,
                   .nonces = nonces, .nonce_len = nonce_len, .tags = tags, .aad = aad,
                   .aad_offsets = aad_offsets, .aad_len = aad_len};
    rc = engine_parallel(n, offsets, threads, crypt_range, &c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}

int64_t engine_open_batch(const engine_key *key, size_t n, const uint8_t *in,
                          const int64_t *offsets, uint8_t *out, const uint8_t *nonces,
                          size_t nonce_len, const uint8_t *tags, const uint8_t *aad,
                          const int64_t *aad_offsets, uint64_t aad_len, uint8_t *failed,
                          int threads) {
    if (key == NULL || !batch_args_ok(key->algorithm, n, in, offsets, out, nonces, nonce_len, tags,
                                      aad, aad_offsets, aad_len) ||
        (n > 0 && failed == NULL))
        return ENGINE_EINVAL;
    if (n == 0) return 0;
    if (batch_disjoint(0, n, in, offsets, out, nonces, nonce_len, 0, tags, aad, aad_offsets,
                       aad_len, failed, NULL) != ENGINE_OK)
        return ENGINE_EOVERLAP;
    crypt_ctx c = {.key = key, .in = in, .offsets = offsets, .out = out,
                   .nonces = (uint8_t *)nonces, .nonce_len = nonce_len, .tags = (uint8_t *)tags,
                   .aad = aad, .aad_offsets = aad_offsets, .aad_len = aad_len, .failed = failed};
    return engine_parallel(n, offsets, threads, crypt_range, &c);
}

/* Record i of ins / outs must share no byte with what the call writes / reads besides itself. */
static int each_disjoint(size_t n, const uint8_t *const *bufs, const int64_t *offsets,
                         const region *others, size_t nothers) {
    size_t i;
    for (i = 0; i < n; i++) {
        const region r = {bufs[i], (uint64_t)(offsets[i + 1] - offsets[i])};
        if (r.len > 0 && r.p == NULL) return ENGINE_EINVAL;
        if (disjoint(&r, 1, others, nothers) != ENGINE_OK) return ENGINE_EOVERLAP;
    }
    return ENGINE_OK;
}

int engine_seal_batch_each(const engine_key *key, size_t n, const uint8_t *const *ins,
                           const int64_t *offsets, uint8_t *out, uint8_t *nonces, size_t nonce_len,
                           int fill_nonces, uint8_t *tags, const uint8_t *aad,
                           const int64_t *aad_offsets, uint64_t aad_len, int threads) {
    int64_t rc;
    if (key == NULL || ins == NULL ||
        !batch_args_ok(key->algorithm, n, (const uint8_t *)ins, offsets, out, nonces, nonce_len,
                       tags, aad, aad_offsets, aad_len))
        return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (batch_disjoint(1, n, NULL, offsets, out, nonces, nonce_len, fill_nonces, tags, aad,
                       aad_offsets, aad_len, NULL, NULL) != ENGINE_OK)
        return ENGINE_EOVERLAP;
    {
        const region writes[] = {{out, (uint64_t)(offsets[n] - offsets[0])},
                                 {tags, (uint64_t)n * ENGINE_TAG_BYTES},
                                 {fill_nonces ? nonces : NULL, (uint64_t)n * nonce_len}};
        if ((rc = each_disjoint(n, ins, offsets, writes, 3)) != ENGINE_OK) return (int)rc;
    }
    if (fill_nonces && engine_random(nonces, n * nonce_len) != ENGINE_OK) return ENGINE_ERANDOM;
    crypt_ctx c = {.key = key, .seal = 1, .ins = ins, .offsets = offsets, .out = out,
                   .nonces = nonces, .nonce_len = nonce_len, .tags = tags, .aad = aad,
                   .aad_offsets = aad_offsets, .aad_len = aad_len};
    rc = engine_parallel(n, offsets, threads, crypt_range, &c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}

int64_t engine_open_batch_each(const engine_key *key, size_t n, const uint8_t *in,
                               const int64_t *offsets, uint8_t *const *outs,
                               const uint8_t *nonces, size_t nonce_len, const uint8_t *tags,
                               const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                               uint8_t *failed, int threads) {
    int rc;
    if (key == NULL || outs == NULL ||
        !batch_args_ok(key->algorithm, n, in, offsets, (const uint8_t *)outs, nonces, nonce_len,
                       tags, aad, aad_offsets, aad_len) ||
        (n > 0 && failed == NULL))
        return ENGINE_EINVAL;
    if (n == 0) return 0;
    if (batch_disjoint(0, n, in, offsets, NULL, nonces, nonce_len, 0, tags, aad, aad_offsets,
                       aad_len, failed, NULL) != ENGINE_OK)
        return ENGINE_EOVERLAP;
    {
        const region reads[] = {{in + offsets[0], (uint64_t)(offsets[n] - offsets[0])},
                                {nonces, (uint64_t)n * nonce_len},
                                {tags, (uint64_t)n * ENGINE_TAG_BYTES},
                                aad_region(n, aad, aad_offsets, aad_len),
                                {failed, n}};
        if ((rc = each_disjoint(n, (const uint8_t *const *)outs, offsets, reads, 5)) != ENGINE_OK)
            return rc;
    }
    crypt_ctx c = {.key = key, .in = in, .offsets = offsets, .outs = outs,
                   .nonces = (uint8_t *)nonces, .nonce_len = nonce_len, .tags = (uint8_t *)tags,
                   .aad = aad, .aad_offsets = aad_offsets, .aad_len = aad_len, .failed = failed};
    return engine_parallel(n, offsets, threads, crypt_range, &c);
}

/* The backend the per-record-key calls run on, or -1. */
static int keys_backend(int backend) {
    if (backend == ENGINE_BACKEND_AUTO) backend = engine_backend_default();
    return engine_backend_available(backend) ? backend : -1;
}

int engine_seal_batch_keys(int backend, int algorithm, size_t n, const uint8_t *keys,
                           const uint8_t *in, const int64_t *offsets, uint8_t *out,
                           const uint8_t *nonces, size_t nonce_len, uint8_t *tags,
                           const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                           int threads) {
    int64_t rc;
    if ((backend = keys_backend(backend)) < 0) return ENGINE_EBACKEND;
    if (!algorithm_ok(algorithm) || (n > 0 && keys == NULL) ||
        !batch_args_ok(algorithm, n, in, offsets, out, nonces, nonce_len, tags, aad, aad_offsets,
                       aad_len))
        return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (batch_disjoint(1, n, in, offsets, out, nonces, nonce_len, 0, tags, aad, aad_offsets,
                       aad_len, NULL, keys) != ENGINE_OK)
        return ENGINE_EOVERLAP;
    crypt_ctx c = {.keys = keys, .backend = backend, .algorithm = algorithm, .seal = 1, .in = in,
                   .offsets = offsets, .out = out, .nonces = (uint8_t *)nonces,
                   .nonce_len = nonce_len, .tags = tags, .aad = aad, .aad_offsets = aad_offsets,
                   .aad_len = aad_len};
    rc = engine_parallel(n, offsets, threads, crypt_range_keys, &c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}

int64_t engine_open_batch_keys(int backend, int algorithm, size_t n, const uint8_t *keys,
                               const uint8_t *in, const int64_t *offsets, uint8_t *out,
                               const uint8_t *nonces, size_t nonce_len, const uint8_t *tags,
                               const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                               uint8_t *failed, int threads) {
    if ((backend = keys_backend(backend)) < 0) return ENGINE_EBACKEND;
    if (!algorithm_ok(algorithm) || (n > 0 && (keys == NULL || failed == NULL)) ||
        !batch_args_ok(algorithm, n, in, offsets, out, nonces, nonce_len, tags, aad, aad_offsets,
                       aad_len))
        return ENGINE_EINVAL;
    if (n == 0) return 0;
    if (batch_disjoint(0, n, in, offsets, out, nonces, nonce_len, 0, tags, aad, aad_offsets,
                       aad_len, failed, keys) != ENGINE_OK)
        return ENGINE_EOVERLAP;
    crypt_ctx c = {.keys = keys, .backend = backend, .algorithm = algorithm, .in = in,
                   .offsets = offsets, .out = out, .nonces = (uint8_t *)nonces,
                   .nonce_len = nonce_len, .tags = (uint8_t *)tags, .aad = aad,
                   .aad_offsets = aad_offsets, .aad_len = aad_len, .failed = failed};
    return engine_parallel(n, offsets, threads, crypt_range_keys, &c);
}

int engine_seal_tokens(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                       const uint8_t *header, size_t header_len, int header_is_aad,
                       size_t nonce_len, uint8_t *out, const int64_t *out_starts,
                       const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                       int threads) {
    uint8_t *nonces;
    int64_t rc;
    if (key == NULL || offsets == NULL || out_starts == NULL ||
        !nonce_len_ok(key->algorithm, nonce_len) || (header_len > 0 && header == NULL) ||
        (aad_offsets == NULL && aad_len > 0 && aad == NULL))
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
        !nonce_len_ok(key->algorithm, nonce_len) ||
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
