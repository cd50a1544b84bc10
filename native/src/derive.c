/* Key derivation from a key handle: HKDF-Expand (RFC 5869 section 2.3) with SHA-512, written on
 * OpenSSL's HMAC so that `info` may be of any length (OpenSSL's own HKDF caps it). The input key
 * is the handle's own 32 bytes; the derived key goes straight into a new handle. */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "backend.h"

#define SHA512_BYTES 64
#define OKM_MAX (ENGINE_KEY_BYTES + ENGINE_DERIVE_EXTRA_MAX)

/* okm = T(1) || T(2) || ... with T(i) = HMAC(prk, T(i-1) || info || i), T(0) empty. */
static int hkdf_expand_sha512(const uint8_t *prk, size_t prk_len, const uint8_t *info,
                              size_t info_len, uint8_t *okm, size_t okm_len) {
    uint8_t block[SHA512_BYTES];
    OSSL_PARAM params[2];
    EVP_MAC *mac;
    EVP_MAC_CTX *ctx = NULL;
    size_t done = 0, outl;
    unsigned char counter = 0;
    int rc = ENGINE_EBACKEND;

    if ((mac = EVP_MAC_fetch(NULL, "HMAC", NULL)) == NULL) return ENGINE_EBACKEND;
    if ((ctx = EVP_MAC_CTX_new(mac)) == NULL) goto out;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA512", 0);
    params[1] = OSSL_PARAM_construct_end();
    while (done < okm_len) {
        size_t take;
        counter++;
        if (EVP_MAC_init(ctx, prk, prk_len, params) != 1) goto out;
        if (done > 0 && EVP_MAC_update(ctx, block, SHA512_BYTES) != 1) goto out;
        if (info_len > 0 && EVP_MAC_update(ctx, info, info_len) != 1) goto out;
        if (EVP_MAC_update(ctx, &counter, 1) != 1) goto out;
        if (EVP_MAC_final(ctx, block, &outl, sizeof(block)) != 1 || outl != SHA512_BYTES) goto out;
        take = okm_len - done < SHA512_BYTES ? okm_len - done : SHA512_BYTES;
        memcpy(okm + done, block, take);
        done += take;
    }
    rc = ENGINE_OK;
out:
    engine_wipe(block, sizeof(block));
    EVP_MAC_CTX_free(ctx); /* cleanses the HMAC state */
    EVP_MAC_free(mac);
    return rc;
}

int engine_key_derive(engine_key **out, const engine_key *key, const uint8_t *info,
                      size_t info_len, uint8_t *extra, size_t extra_len) {
    uint8_t okm[OKM_MAX];
    int rc;
    if (out == NULL || key == NULL || (info_len > 0 && info == NULL) ||
        (extra_len > 0 && extra == NULL) || extra_len > ENGINE_DERIVE_EXTRA_MAX)
        return ENGINE_EINVAL;
    *out = NULL;
    rc = hkdf_expand_sha512(key->raw, ENGINE_KEY_BYTES, info, info_len, okm,
                            ENGINE_KEY_BYTES + extra_len);
    if (rc == ENGINE_OK) rc = engine_key_new(out, key->backend, okm);
    if (rc == ENGINE_OK && extra_len > 0) memcpy(extra, okm + ENGINE_KEY_BYTES, extra_len);
    engine_wipe(okm, sizeof(okm));
    return rc;
}
