/* Intel ipsec-mb AES-256-GCM through its direct (non-job) API: the key handle holds the expanded
 * key and GHASH tables (struct gcm_key_data, 64-byte aligned); workers hold a gcm_context_data.
 * The manager is only a table of function pointers chosen for this CPU, shared by all threads. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <intel-ipsec-mb.h>

#include "backend.h"

static IMB_MGR *g_mgr;
static IMB_ARCH g_arch = IMB_ARCH_NONE;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void mgr_init(void) {
    IMB_MGR *mgr = alloc_mb_mgr(0);
    if (mgr == NULL) return;
    init_mb_mgr_auto(mgr, &g_arch);
    if (imb_get_errno(mgr) != 0 || g_arch < IMB_ARCH_SSE ||
        (mgr->features & IMB_FEATURE_AESNI) == 0) {
        free_mb_mgr(mgr);
        g_arch = IMB_ARCH_NONE;
        return;
    }
    g_mgr = mgr;
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

static int imb_key_init(engine_key *key, const uint8_t *raw) {
    struct gcm_key_data *kd;
    if (!imb_available()) return ENGINE_EBACKEND;
    if (posix_memalign((void **)&kd, 64, sizeof(*kd)) != 0) return ENGINE_ENOMEM;
    IMB_AES256_GCM_PRE(g_mgr, raw, kd);
    key->impl = kd;
    return ENGINE_OK;
}

static void imb_key_wipe(engine_key *key) {
    if (key->impl != NULL) {
        engine_wipe(key->impl, sizeof(struct gcm_key_data));
        free(key->impl);
        key->impl = NULL;
    }
}

_Static_assert(sizeof(struct gcm_context_data) <= sizeof(((engine_worker *)0)->inline_state),
               "gcm_context_data must fit in engine_worker");

static int imb_worker_init(const engine_key *key, engine_worker *w) {
    (void)key;
    w->state = w->inline_state;
    return ENGINE_OK;
}

static void imb_worker_free(engine_worker *w) {
    /* The context holds counter blocks and a partial keystream block. */
    engine_wipe(w->inline_state, sizeof(struct gcm_context_data));
    w->state = NULL;
}

static void imb_crypt(const engine_key *key, struct gcm_context_data *ctx, int enc, uint8_t *out,
                      const uint8_t *in, uint64_t len, const uint8_t *nonce, size_t nonce_len,
                      const uint8_t *aad, uint64_t aad_len, uint8_t *tag) {
    const struct gcm_key_data *kd = (const struct gcm_key_data *)key->impl;
    if (nonce_len == 12) {
        if (enc)
            IMB_AES256_GCM_ENC(g_mgr, kd, ctx, out, in, len, nonce, aad, aad_len, tag,
                               ENGINE_TAG_BYTES);
        else
            IMB_AES256_GCM_DEC(g_mgr, kd, ctx, out, in, len, nonce, aad, aad_len, tag,
                               ENGINE_TAG_BYTES);
        return;
    }
    IMB_AES256_GCM_INIT_VAR_IV(g_mgr, kd, ctx, nonce, nonce_len, aad, aad_len);
    if (enc) {
        IMB_AES256_GCM_ENC_UPDATE(g_mgr, kd, ctx, out, in, len);
        IMB_AES256_GCM_ENC_FINALIZE(g_mgr, kd, ctx, tag, ENGINE_TAG_BYTES);
    } else {
        IMB_AES256_GCM_DEC_UPDATE(g_mgr, kd, ctx, out, in, len);
        IMB_AES256_GCM_DEC_FINALIZE(g_mgr, kd, ctx, tag, ENGINE_TAG_BYTES);
    }
}

static int imb_seal(const engine_key *key, engine_worker *w, uint8_t *out, uint8_t *tag,
                    const uint8_t *in, uint64_t len, const uint8_t *nonce, size_t nonce_len,
                    const uint8_t *aad, uint64_t aad_len) {
    imb_crypt(key, (struct gcm_context_data *)w->state, 1, out, in, len, nonce, nonce_len, aad,
              aad_len, tag);
    return ENGINE_OK;
}

static int imb_open(const engine_key *key, engine_worker *w, uint8_t *out, const uint8_t *in,
                    uint64_t len, const uint8_t *tag, const uint8_t *nonce, size_t nonce_len,
                    const uint8_t *aad, uint64_t aad_len) {
    uint8_t computed[ENGINE_TAG_BYTES];
    int differ;
    imb_crypt(key, (struct gcm_context_data *)w->state, 0, out, in, len, nonce, nonce_len, aad,
              aad_len, computed);
    differ = engine_ct_differ(computed, tag, ENGINE_TAG_BYTES);
    engine_wipe(computed, sizeof(computed));
    return differ ? ENGINE_EAUTH : ENGINE_OK;
}

const engine_backend_ops engine_ipsecmb_ops = {
    imb_available, imb_version,     imb_isa,  imb_key_init, imb_key_wipe,
    imb_worker_init, imb_worker_free, imb_seal, imb_open,
};
