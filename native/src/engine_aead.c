/* Dispatcher: backend choice, key handles, single-message calls and the threaded batch loop. */
#include <pthread.h>
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
    if (rc == ENGINE_EAUTH && len > 0) engine_wipe(out, (size_t)len);
    return rc;
}

/* ---- batches ---- */

typedef struct batch_job {
    const engine_key *key;
    int seal;
    size_t begin, end; /* records [begin, end) */
    const uint8_t *in;
    const int64_t *offsets;
    uint8_t *out;
    uint8_t *nonces;
    size_t nonce_len;
    uint8_t *tags;
    const uint8_t *aad;
    const int64_t *aad_offsets;
    uint64_t aad_len;
    uint8_t *failed;
    int64_t nfailed;
    int rc;
} batch_job;

static void *run_job(void *arg) {
    batch_job *job = (batch_job *)arg;
    const engine_key *key = job->key;
    const int64_t base = job->offsets[0];
    engine_worker w;
    size_t i;
    job->nfailed = 0;
    if ((job->rc = key->ops->worker_init(key, &w)) != ENGINE_OK) return NULL;
    for (i = job->begin; i < job->end; i++) {
        const uint64_t len = (uint64_t)(job->offsets[i + 1] - job->offsets[i]);
        const uint8_t *src = nonnull(job->in + job->offsets[i]);
        uint8_t *dst = nonnull_out(job->out + (job->offsets[i] - base));
        const uint8_t *aad = job->aad;
        uint64_t aad_len = job->aad_len;
        int rc;
        if (job->aad_offsets != NULL) {
            aad = job->aad + job->aad_offsets[i];
            aad_len = (uint64_t)(job->aad_offsets[i + 1] - job->aad_offsets[i]);
        }
        aad = nonnull(aad);
        if (job->seal) {
            rc = key->ops->seal(key, &w, dst, job->tags + i * ENGINE_TAG_BYTES, src, len,
                                job->nonces + i * job->nonce_len, job->nonce_len, aad, aad_len);
        } else {
            rc = key->ops->open(key, &w, dst, src, len, job->tags + i * ENGINE_TAG_BYTES,
                                job->nonces + i * job->nonce_len, job->nonce_len, aad, aad_len);
            if (rc == ENGINE_EAUTH) {
                if (len > 0) engine_wipe(dst, (size_t)len);
                job->failed[i] = 1;
                job->nfailed++;
                continue;
            }
            job->failed[i] = 0;
        }
        if (rc != ENGINE_OK) {
            job->rc = rc;
            break;
        }
    }
    key->ops->worker_free(&w);
    return NULL;
}

static uint64_t weight_at(const int64_t *offsets, size_t j) {
    return (uint64_t)(offsets[j] - offsets[0]) + (uint64_t)j * RECORD_WEIGHT;
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

static int64_t run_batch(batch_job *proto, size_t n, int threads) {
    batch_job jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    const uint64_t total = weight_at(proto->offsets, n);
    size_t t, nt, started = 0, prev = 0;
    int64_t nfailed = 0;
    int rc = ENGINE_OK;

    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    nt = (size_t)threads;
    if (total / MIN_THREAD_WEIGHT < nt) nt = (size_t)(total / MIN_THREAD_WEIGHT);
    if (nt > n) nt = n;
    if (nt < 1) nt = 1;

    for (t = 0; t < nt; t++) {
        size_t end = t + 1 == nt ? n : split_point(proto->offsets, n, total / nt * (t + 1));
        jobs[t] = *proto;
        jobs[t].begin = prev;
        jobs[t].end = end;
        prev = end;
    }
    /* Workers 1..nt-1 on new threads, worker 0 on the calling thread. */
    for (t = 1; t < nt; t++) {
        if (pthread_create(&tids[t], NULL, run_job, &jobs[t]) != 0) {
            rc = ENGINE_ETHREAD;
            break;
        }
        started = t;
    }
    if (rc == ENGINE_OK) run_job(&jobs[0]);
    for (t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    if (rc != ENGINE_OK) return rc;
    for (t = 0; t < nt; t++) {
        if (jobs[t].rc != ENGINE_OK) return jobs[t].rc;
        nfailed += jobs[t].nfailed;
    }
    return nfailed;
}

static int batch_args_ok(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                         uint8_t *out, const uint8_t *nonces, size_t nonce_len, uint8_t *tags,
                         const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len) {
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

int engine_seal_batch(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                      uint8_t *out, uint8_t *nonces, size_t nonce_len, int fill_nonces,
                      uint8_t *tags, const uint8_t *aad, const int64_t *aad_offsets,
                      uint64_t aad_len, int threads) {
    batch_job proto;
    int64_t rc;
    if (!batch_args_ok(key, n, in, offsets, out, nonces, nonce_len, tags, aad, aad_offsets, aad_len))
        return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (fill_nonces && engine_random(nonces, n * nonce_len) != ENGINE_OK) return ENGINE_ERANDOM;
    memset(&proto, 0, sizeof(proto));
    proto.key = key;
    proto.seal = 1;
    proto.in = in;
    proto.offsets = offsets;
    proto.out = out;
    proto.nonces = nonces;
    proto.nonce_len = nonce_len;
    proto.tags = tags;
    proto.aad = aad;
    proto.aad_offsets = aad_offsets;
    proto.aad_len = aad_len;
    rc = run_batch(&proto, n, threads);
    return rc < 0 ? (int)rc : ENGINE_OK;
}

int64_t engine_open_batch(const engine_key *key, size_t n, const uint8_t *in,
                          const int64_t *offsets, uint8_t *out, const uint8_t *nonces,
                          size_t nonce_len, const uint8_t *tags, const uint8_t *aad,
                          const int64_t *aad_offsets, uint64_t aad_len, uint8_t *failed,
                          int threads) {
    batch_job proto;
    if (!batch_args_ok(key, n, in, offsets, out, nonces, nonce_len, (uint8_t *)tags, aad,
                       aad_offsets, aad_len) ||
        (n > 0 && failed == NULL))
        return ENGINE_EINVAL;
    if (n == 0) return 0;
    memset(&proto, 0, sizeof(proto));
    proto.key = key;
    proto.seal = 0;
    proto.in = in;
    proto.offsets = offsets;
    proto.out = out;
    proto.nonces = (uint8_t *)nonces;
    proto.nonce_len = nonce_len;
    proto.tags = (uint8_t *)tags;
    proto.aad = aad;
    proto.aad_offsets = aad_offsets;
    proto.aad_len = aad_len;
    proto.failed = failed;
    return run_batch(&proto, n, threads);
}

int engine_random(uint8_t *buf, size_t len) {
    const size_t step = (size_t)1 << 30;
    if (buf == NULL && len > 0) return ENGINE_EINVAL;
    while (len > 0) {
        size_t k = len < step ? len : step;
        if (RAND_bytes(buf, (int)k) != 1) return ENGINE_ERANDOM;
        buf += k;
        len -= k;
    }
    return ENGINE_OK;
}
