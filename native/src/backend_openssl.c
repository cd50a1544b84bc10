/* OpenSSL EVP AES-256-GCM: the portable backend. The key handle holds a template context whose key
 * schedule is computed once; each worker thread copies it and only sets the nonce per message. */
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

static int ossl_key_init(engine_key *key, const uint8_t *raw) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return ENGINE_ENOMEM;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, raw, NULL, 1) != 1) {
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

static int ossl_worker_init(const engine_key *key, engine_worker *w) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return ENGINE_ENOMEM;
    if (EVP_CIPHER_CTX_copy(ctx, (const EVP_CIPHER_CTX *)key->impl) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return ENGINE_EBACKEND;
    }
    w->state = ctx;
    return ENGINE_OK;
}

static void ossl_worker_free(engine_worker *w) {
    EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *)w->state);
    w->state = NULL;
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
    EVP_CIPHER_CTX *ctx = (EVP_CIPHER_CTX *)w->state;
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
    EVP_CIPHER_CTX *ctx = (EVP_CIPHER_CTX *)w->state;
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
    ossl_available, ossl_version,   ossl_isa,  ossl_key_init, ossl_key_wipe,
    ossl_worker_init, ossl_worker_free, ossl_seal, ossl_open,
};
