/* OpenSSL EVP AES-256-GCM: the portable backend. The key handle holds a template context whose key
 * schedule is computed once; each worker thread copies it and only sets the nonce per message.
 * XAES-256-GCM: the handle holds an AES-256-ECB template context for the derivation; a worker
 * copies it, and sets each message's key on a GCM context of its own. */
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>

#include "backend.h"

#define CHUNK ((uint64_t)1 << 30) /* EVP lengths are int */

static int ossl_available(void) { return 1; }

static const char *ossl_version(void) { return OpenSSL_version(OPENSSL_VERSION); }

static const char *ossl_isa(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("vaes") && __builtin_cpu_supports("avx512f")) return "aesni+vaes";
    if (__builtin_cpu_supports("aes")) return "aesni";
    return "generic";
#else
    return "generic";
#endif
}

/* A worker's contexts: GCM, and for XAES the derivation's ECB (NULL otherwise). */
typedef struct ossl_worker {
    EVP_CIPHER_CTX *gcm;
    EVP_CIPHER_CTX *ecb;
} ossl_worker;

static int ossl_key_init(engine_key *key, const uint8_t *raw) {
    const int xaes = key->algorithm == ENGINE_ALG_XAES_GCM;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return ENGINE_ENOMEM;
    if (EVP_CipherInit_ex(ctx, xaes ? EVP_aes_256_ecb() : EVP_aes_256_gcm(), NULL, raw, NULL, 1) !=
            1 ||
        (xaes && EVP_CIPHER_CTX_set_padding(ctx, 0) != 1)) {
        EVP_CIPHER_CTX_free(ctx);
        return ENGINE_EBACKEND;
    }
    key->impl = ctx;
    return ENGINE_OK;
}

static void ossl_key_wipe(engine_key *key) {
    /* EVP_CIPHER_CTX_free cleanses the key schedule. */
    EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *)key->impl);
    key->impl = NULL;
}

static void ossl_worker_free(engine_worker *w) {
    ossl_worker *st = (ossl_worker *)w->state;
    /* EVP_CIPHER_CTX_free cleanses key schedules (the last message key, for XAES). */
    EVP_CIPHER_CTX_free(st->gcm);
    EVP_CIPHER_CTX_free(st->ecb);
    w->state = NULL;
}

static int ossl_worker_init(const engine_key *key, engine_worker *w) {
    ossl_worker *st = (ossl_worker *)w->inline_state;
    const EVP_CIPHER_CTX *shared = (const EVP_CIPHER_CTX *)key->impl;
    int ok;
    st->gcm = EVP_CIPHER_CTX_new();
    st->ecb = NULL;
    w->state = st;
    if (st->gcm == NULL) return ENGINE_ENOMEM;
    if (key->algorithm == ENGINE_ALG_XAES_GCM) {
        st->ecb = EVP_CIPHER_CTX_new();
        ok = st->ecb != NULL && EVP_CIPHER_CTX_copy(st->ecb, shared) == 1 &&
             EVP_CipherInit_ex(st->gcm, EVP_aes_256_gcm(), NULL, NULL, NULL, 1) == 1;
    } else {
        ok = EVP_CIPHER_CTX_copy(st->gcm, shared) == 1;
    }
    if (!ok) {
        ossl_worker_free(w);
        return ENGINE_EBACKEND;
    }
    return ENGINE_OK;
}

static int ossl_encrypt_blocks2(const engine_key *key, engine_worker *w, uint8_t *out,
                                const uint8_t *in) {
    int outl;
    (void)key;
    if (EVP_EncryptUpdate(((ossl_worker *)w->state)->ecb, out, &outl, in, 32) != 1 || outl != 32)
        return ENGINE_EBACKEND;
    return ENGINE_OK;
}

static int ossl_set_message_key(engine_worker *w, const uint8_t *raw, uint64_t len) {
    (void)len;
    if (EVP_CipherInit_ex(((ossl_worker *)w->state)->gcm, NULL, NULL, raw, NULL, -1) != 1)
        return ENGINE_EBACKEND;
    return ENGINE_OK;
}

static int ossl_start(EVP_CIPHER_CTX *ctx, int enc, const uint8_t *nonce, size_t nonce_len,
                      const uint8_t *aad, uint64_t aad_len) {
    int outl;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, NULL, enc) != 1) return ENGINE_EBACKEND;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, (int)nonce_len, NULL) != 1)
        return ENGINE_EBACKEND;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, enc) != 1) return ENGINE_EBACKEND;
    while (aad_len > 0) {
        int step = (int)(aad_len < CHUNK ? aad_len : CHUNK);
        if (EVP_CipherUpdate(ctx, NULL, &outl, aad, step) != 1) return ENGINE_EBACKEND;
        aad += step;
        aad_len -= (uint64_t)step;
    }
    return ENGINE_OK;
}

static int ossl_update(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *in, uint64_t len) {
    int outl;
    while (len > 0) {
        int step = (int)(len < CHUNK ? len : CHUNK);
        if (EVP_CipherUpdate(ctx, out, &outl, in, step) != 1) return ENGINE_EBACKEND;
        in += step;
        out += step;
        len -= (uint64_t)step;
    }
    return ENGINE_OK;
}

static int ossl_seal(const engine_key *key, engine_worker *w, uint8_t *out, uint8_t *tag,
                     const uint8_t *in, uint64_t len, const uint8_t *nonce, size_t nonce_len,
                     const uint8_t *aad, uint64_t aad_len) {
    EVP_CIPHER_CTX *ctx = ((ossl_worker *)w->state)->gcm;
    int outl, rc;
    (void)key;
    if ((rc = ossl_start(ctx, 1, nonce, nonce_len, aad, aad_len)) != ENGINE_OK) return rc;
    if ((rc = ossl_update(ctx, out, in, len)) != ENGINE_OK) return rc;
    if (EVP_CipherFinal_ex(ctx, out + len, &outl) != 1) return ENGINE_EBACKEND;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ENGINE_TAG_BYTES, tag) != 1)
        return ENGINE_EBACKEND;
    return ENGINE_OK;
}

static int ossl_open(const engine_key *key, engine_worker *w, uint8_t *out, const uint8_t *in,
                     uint64_t len, const uint8_t *tag, const uint8_t *nonce, size_t nonce_len,
                     const uint8_t *aad, uint64_t aad_len) {
    EVP_CIPHER_CTX *ctx = ((ossl_worker *)w->state)->gcm;
    int outl, rc;
    (void)key;
    if ((rc = ossl_start(ctx, 0, nonce, nonce_len, aad, aad_len)) != ENGINE_OK) return rc;
    if ((rc = ossl_update(ctx, out, in, len)) != ENGINE_OK) return rc;
    /* OpenSSL compares the tag with CRYPTO_memcmp (constant time). */
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ENGINE_TAG_BYTES, (void *)tag) != 1)
        return ENGINE_EBACKEND;
    if (EVP_CipherFinal_ex(ctx, out + len, &outl) != 1) return ENGINE_EAUTH;
    return ENGINE_OK;
}

const engine_backend_ops engine_openssl_ops = {
    .available = ossl_available,
    .version = ossl_version,
    .isa = ossl_isa,
    .key_init = ossl_key_init,
    .key_wipe = ossl_key_wipe,
    .worker_init = ossl_worker_init,
    .worker_free = ossl_worker_free,
    .encrypt_blocks2 = ossl_encrypt_blocks2,
    .set_message_key = ossl_set_message_key,
    .seal = ossl_seal,
    .open = ossl_open,
};
