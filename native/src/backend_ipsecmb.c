/* Intel ipsec-mb AES-256-GCM through its direct (non-job) API: the key handle holds the expanded
 * key and GHASH tables (struct gcm_key_data, 64-byte aligned); workers hold a gcm_context_data.
 * The manager is only a table of function pointers chosen for this CPU, shared by all threads.
 *
 * XAES-256-GCM: the handle holds the AES-256 round keys of its key (IMB_AES_KEYEXP_256); the
 * derivation's two block encryptions run on them with AES-NI instructions (ipsec-mb 1.3 has no
 * single-block AES-256 call; this backend requires AES-NI anyway), and each message key is set
 * up by IMB_AES256_GCM_PRE into the worker. That set-up computes GHASH tables whose size depends
 * on the code path: the AVX-512/VAES path's tables cost about half again as much as the AVX2
 * path's, which only long messages repay, so messages up to 1 KiB use an AVX2 manager. The
 * shortest messages repay no tables at all: they go through gcm_single_use.c, which expands the
 * key as it encrypts and hashes with H^1..H^5 only. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>
#include <intel-ipsec-mb.h>

#include "backend.h"

/* XAES only: messages shorter than SINGLE_USE_BYTES go through gcm_single_use.c, and those
 * shorter than SMALL_MESSAGE_BYTES take the AVX2 code when the default is AVX-512. */
#define SINGLE_USE_BYTES 192
#define SMALL_MESSAGE_BYTES 1024
#define ROUND_KEYS_BYTES (15 * 16)

static IMB_MGR *g_mgr;
static IMB_MGR *g_mgr_small; /* AVX2, when g_mgr is AVX-512; else g_mgr */
static IMB_ARCH g_arch = IMB_ARCH_NONE;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* A worker's state: the message key (XAES only) and the GCM context. */
typedef struct imb_worker {
    struct gcm_key_data message_key;
    struct gcm_context_data ctx;
    const struct gcm_key_data *kd; /* the key in use: the handle's, or message_key */
    IMB_MGR *mgr;                  /* the manager whose code path computed kd */
    uint8_t single_use_key[32];    /* the message key, when kd is NULL (a short XAES message) */
    int expanded;                  /* message_key holds a key (kd may have moved on since) */
} imb_worker;

_Static_assert(sizeof(imb_worker) <= sizeof(((engine_worker *)0)->inline_state),
               "the ipsec-mb worker state must fit in engine_worker");

/* The XAES handle's round keys, for the AES-NI instructions. */
typedef struct imb_xaes_key {
    _Alignas(16) uint8_t round_keys[ROUND_KEYS_BYTES];
} imb_xaes_key;

static void mgr_init(void) {
    IMB_MGR *mgr = alloc_mb_mgr(0);
    if (mgr == NULL) return;
    init_mb_mgr_auto(mgr, &g_arch);
    /* AES-NI, PCLMULQDQ and SSE4.2 (the SSE code path's needs) are gcm_single_use.c's too. */
    if (imb_get_errno(mgr) != 0 || g_arch < IMB_ARCH_SSE ||
        (mgr->features & IMB_CPUFLAGS_SSE) != IMB_CPUFLAGS_SSE) {
        free_mb_mgr(mgr);
        g_arch = IMB_ARCH_NONE;
        return;
    }
    g_mgr = mgr;
    g_mgr_small = mgr;
    if (g_arch == IMB_ARCH_AVX512 && (mgr->features & IMB_FEATURE_AVX2)) {
        IMB_MGR *small = alloc_mb_mgr(0);
        if (small != NULL) {
            init_mb_mgr_avx2(small);
            if (imb_get_errno(small) == 0)
                g_mgr_small = small;
            else
                free_mb_mgr(small);
        }
    }
}

static int imb_available(void) {
    pthread_once(&g_once, mgr_init);
    return g_mgr != NULL;
}

static const char *imb_version(void) { return imb_get_version_str(); }

static const char *imb_isa(void) {
    if (!imb_available()) return "none";
    switch (g_arch) {
    case IMB_ARCH_AVX512:
        return (g_mgr->features & IMB_FEATURE_VAES) ? "avx512+vaes" : "avx512";
    case IMB_ARCH_AVX2: return "avx2";
#if IMB_VERSION_NUM < IMB_VERSION(2, 0, 0) /* 2.0 folded the AVX manager into SSE */
    case IMB_ARCH_AVX: return "avx";
#endif
    case IMB_ARCH_SSE: return "sse";
    default: return "none";
    }
}

static size_t impl_bytes(const engine_key *key) {
    return key->algorithm == ENGINE_ALG_XAES_GCM ? sizeof(imb_xaes_key)
                                                 : sizeof(struct gcm_key_data);
}

static int imb_key_init(engine_key *key, const uint8_t *raw) {
    void *impl;
    if (!imb_available()) return ENGINE_EBACKEND;
    if (posix_memalign(&impl, 64, impl_bytes(key)) != 0) return ENGINE_ENOMEM;
    if (key->algorithm == ENGINE_ALG_XAES_GCM) {
        _Alignas(16) uint8_t decrypt_keys[ROUND_KEYS_BYTES];
        IMB_AES_KEYEXP_256(g_mgr, raw, ((imb_xaes_key *)impl)->round_keys, decrypt_keys);
        engine_wipe(decrypt_keys, sizeof(decrypt_keys));
    } else {
        IMB_AES256_GCM_PRE(g_mgr, raw, (struct gcm_key_data *)impl);
    }
    key->impl = impl;
    return ENGINE_OK;
}

static void imb_key_wipe(engine_key *key) {
    if (key->impl != NULL) {
        engine_wipe(key->impl, impl_bytes(key));
        free(key->impl);
        key->impl = NULL;
    }
}

static int imb_worker_init(const engine_key *key, engine_worker *w) {
    imb_worker *st = (imb_worker *)w->inline_state;
    st->kd = key->algorithm == ENGINE_ALG_XAES_GCM ? NULL : (const struct gcm_key_data *)key->impl;
    st->mgr = g_mgr;
    st->expanded = 0;
    w->state = st;
    return ENGINE_OK;
}

static void imb_worker_free(engine_worker *w) {
    imb_worker *st = (imb_worker *)w->state;
    /* The context holds counter blocks and a partial keystream block; message_key, the last
     * message key expanded here (XAES), even when a short message came after it. */
    engine_wipe(&st->ctx, sizeof(st->ctx));
    if (st->expanded) engine_wipe(&st->message_key, sizeof(st->message_key));
    engine_wipe(st->single_use_key, sizeof(st->single_use_key));
    w->state = NULL;
}

__attribute__((target("aes"))) static int imb_encrypt_blocks2(const engine_key *key,
                                                               engine_worker *w, uint8_t *out,
                                                               const uint8_t *in) {
    const __m128i *rk = (const __m128i *)((const imb_xaes_key *)key->impl)->round_keys;
    __m128i a = _mm_xor_si128(_mm_loadu_si128((const __m128i *)in), rk[0]);
    __m128i b = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(in + 16)), rk[0]);
    int r;
    (void)w;
    for (r = 1; r < 14; r++) {
        a = _mm_aesenc_si128(a, rk[r]);
        b = _mm_aesenc_si128(b, rk[r]);
    }
    _mm_storeu_si128((__m128i *)out, _mm_aesenclast_si128(a, rk[14]));
    _mm_storeu_si128((__m128i *)(out + 16), _mm_aesenclast_si128(b, rk[14]));
    return ENGINE_OK;
}

static int imb_set_message_key(engine_worker *w, const uint8_t *raw, uint64_t len) {
    imb_worker *st = (imb_worker *)w->state;
    if (len < SINGLE_USE_BYTES) {
        memcpy(st->single_use_key, raw, sizeof(st->single_use_key));
        st->kd = NULL;
        return ENGINE_OK;
    }
    st->mgr = len < SMALL_MESSAGE_BYTES ? g_mgr_small : g_mgr;
    IMB_AES256_GCM_PRE(st->mgr, raw, &st->message_key);
    st->kd = &st->message_key;
    st->expanded = 1;
    return ENGINE_OK;
}

static void imb_crypt(imb_worker *st, int enc, uint8_t *out, const uint8_t *in, uint64_t len,
                      const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                      uint64_t aad_len, uint8_t *tag) {
    const struct gcm_key_data *kd = st->kd;
    IMB_MGR *mgr = st->mgr;
    struct gcm_context_data *ctx = &st->ctx;
    if (kd == NULL) { /* set_message_key chose gcm_single_use.c; XAES nonces are 12 bytes */
        engine_gcm_single_use(enc, st->single_use_key, out, in, len, nonce, aad, aad_len, tag);
        return;
    }
    if (nonce_len == 12) {
        if (enc)
            IMB_AES256_GCM_ENC(mgr, kd, ctx, out, in, len, nonce, aad, aad_len, tag,
                               ENGINE_TAG_BYTES);
        else
            IMB_AES256_GCM_DEC(mgr, kd, ctx, out, in, len, nonce, aad, aad_len, tag,
                               ENGINE_TAG_BYTES);
        return;
    }
    IMB_AES256_GCM_INIT_VAR_IV(mgr, kd, ctx, nonce, nonce_len, aad, aad_len);
    if (enc) {
        IMB_AES256_GCM_ENC_UPDATE(mgr, kd, ctx, out, in, len);
        IMB_AES256_GCM_ENC_FINALIZE(mgr, kd, ctx, tag, ENGINE_TAG_BYTES);
    } else {
        IMB_AES256_GCM_DEC_UPDATE(mgr, kd, ctx, out, in, len);
        IMB_AES256_GCM_DEC_FINALIZE(mgr, kd, ctx, tag, ENGINE_TAG_BYTES);
    }
}

static int imb_seal(const engine_key *key, engine_worker *w, uint8_t *out, uint8_t *tag,
                    const uint8_t *in, uint64_t len, const uint8_t *nonce, size_t nonce_len,
                    const uint8_t *aad, uint64_t aad_len) {
    (void)key;
    imb_crypt((imb_worker *)w->state, 1, out, in, len, nonce, nonce_len, aad, aad_len, tag);
    return ENGINE_OK;
}

static int imb_open(const engine_key *key, engine_worker *w, uint8_t *out, const uint8_t *in,
                    uint64_t len, const uint8_t *tag, const uint8_t *nonce, size_t nonce_len,
                    const uint8_t *aad, uint64_t aad_len) {
    uint8_t computed[ENGINE_TAG_BYTES];
    int differ;
    (void)key;
    imb_crypt((imb_worker *)w->state, 0, out, in, len, nonce, nonce_len, aad, aad_len, computed);
    differ = engine_ct_differ(computed, tag, ENGINE_TAG_BYTES);
    engine_wipe(computed, sizeof(computed));
    return differ ? ENGINE_EAUTH : ENGINE_OK;
}

static void imb_xaes_pair(const engine_key *key, int seal, const engine_message m[2],
                          uint8_t computed[2][ENGINE_TAG_BYTES]) {
    engine_xaes_short_pair(((const imb_xaes_key *)key->impl)->round_keys, key->k1, seal, m, computed);
}

const engine_backend_ops engine_ipsecmb_ops = {
    .available = imb_available,
    .version = imb_version,
    .isa = imb_isa,
    .key_init = imb_key_init,
    .key_wipe = imb_key_wipe,
    .worker_init = imb_worker_init,
    .worker_free = imb_worker_free,
    .encrypt_blocks2 = imb_encrypt_blocks2,
    .set_message_key = imb_set_message_key,
    .seal = imb_seal,
    .open = imb_open,
    .xaes_pair = imb_xaes_pair,
};

/* ---- HMAC-SHA-256 for blind indexes, through the job API ----
 * Multi-buffer, and SHA-NI where the CPU has it (an SSE-arch manager then, the fastest here).
 * The manager is the calling thread's own, placed in memory this function allocates, so that it
 * is wiped before it is freed: its lanes keep the last message blocks. The job API refuses
 * empty messages: those records are left to the caller. */

static int hmac_done(IMB_JOB *job, uint8_t *out, size_t out_len, uint8_t last_mask) {
    uint8_t *dst = out + (size_t)(uintptr_t)job->user_data * out_len;
    if (job->status != IMB_STATUS_COMPLETED) return ENGINE_EBACKEND;
    memcpy(dst, job->auth_tag_output, out_len);
    dst[out_len - 1] &= last_mask;
    return ENGINE_OK;
}

int engine_ipsecmb_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *in,
                               const int64_t *offsets, size_t begin, size_t end, uint8_t *out,
                               size_t out_len, uint8_t last_mask) {
    const size_t mgr_bytes = imb_get_mb_mgr_size(), ring = IMB_MAX_JOBS;
    const size_t total = mgr_bytes + ring * IMB_SHA256_DIGEST_SIZE_IN_BYTES;
    _Alignas(16) uint8_t pads[2][IMB_SHA256_DIGEST_SIZE_IN_BYTES];
    uint8_t block[64], *tags;
    IMB_MGR *mgr;
    IMB_JOB *job;
    void *mem;
    size_t i, j;
    int rc = ENGINE_OK;
    if (!imb_available()) return ENGINE_EBACKEND;
    if (posix_memalign(&mem, 64, total) != 0) return ENGINE_ENOMEM;
    tags = (uint8_t *)mem + mgr_bytes;
    mgr = imb_set_pointers_mb_mgr(mem, 0, 1);
    if (mgr->features & IMB_FEATURE_SHANI) {
        init_mb_mgr_sse(mgr);
    } else {
        IMB_ARCH arch;
        init_mb_mgr_auto(mgr, &arch);
    }
    if (imb_get_errno(mgr) != 0) {
        rc = ENGINE_EBACKEND;
        goto out;
    }
    for (j = 0; j < 2; j++) {
        memset(block, j == 0 ? 0x36 : 0x5c, sizeof(block));
        for (i = 0; i < key_len; i++) block[i] ^= key[i];
        IMB_SHA256_ONE_BLOCK(mgr, block, pads[j]);
    }
    for (i = begin; i < end && rc == ENGINE_OK; i++) {
        if (offsets[i + 1] == offsets[i]) continue;
        job = IMB_GET_NEXT_JOB(mgr);
        job->cipher_mode = IMB_CIPHER_NULL;
        job->cipher_direction = IMB_DIR_ENCRYPT;
        job->chain_order = IMB_ORDER_HASH_CIPHER;
        job->src = in + offsets[i];
        job->dst = NULL;
        job->msg_len_to_cipher_in_bytes = 0;
        job->cipher_start_src_offset_in_bytes = 0;
        job->hash_alg = IMB_AUTH_HMAC_SHA_256;
        job->hash_start_src_offset_in_bytes = 0;
        job->msg_len_to_hash_in_bytes = (uint64_t)(offsets[i + 1] - offsets[i]);
        /* a job is returned before its slot of the ring comes round again */
        job->auth_tag_output = tags + (i % ring) * IMB_SHA256_DIGEST_SIZE_IN_BYTES;
        job->auth_tag_output_len_in_bytes = IMB_SHA256_DIGEST_SIZE_IN_BYTES;
        job->u.HMAC._hashed_auth_key_xor_ipad = pads[0];
        job->u.HMAC._hashed_auth_key_xor_opad = pads[1];
        job->user_data = (void *)(uintptr_t)i;
        for (job = IMB_SUBMIT_JOB(mgr); job != NULL && rc == ENGINE_OK;
             job = IMB_GET_COMPLETED_JOB(mgr))
            rc = hmac_done(job, out, out_len, last_mask);
    }
    while ((job = IMB_FLUSH_JOB(mgr)) != NULL)
        if (rc == ENGINE_OK) rc = hmac_done(job, out, out_len, last_mask);
out:
    engine_wipe(block, sizeof(block));
    engine_wipe(pads, sizeof(pads));
    engine_wipe(mem, total);
    free(mem);
    return rc;
}
