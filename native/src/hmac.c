/* Blind indexes: HMAC-SHA-256 of many records under one key, and the normalisation of their
 * values.
 *
 * Measured on the target machine for 25-byte records, one core: ipsec-mb's multi-buffer job API
 * (SHA-NI) 81 ns per record, OpenSSL EVP with the two keyed states copied per record 157 ns,
 * OpenSSL's one-shot HMAC() 1,184 ns. ipsec-mb's manager takes about 100 us to set up per
 * thread, so it runs ranges of RANGE_FOR_IPSECMB records or more, and EVP the small ones (a
 * lookup's few values) and builds without ipsec-mb. */
#include <string.h>

#include <openssl/evp.h>

#include "backend.h"

#define SHA256_BLOCK 64
#define SHA256_BYTES 32
#define RANGE_FOR_IPSECMB 4096

typedef struct hmac_ctx {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *in;
    const int64_t *offsets;
    uint8_t *out;
    size_t out_len;
    uint8_t last_mask; /* keeps the leading bits of the last output byte */
} hmac_ctx;

/* ctx := SHA-256 that has absorbed key ^ (pad repeated), one block. */
static int keyed_state(EVP_MD_CTX *ctx, const EVP_MD *md, const uint8_t *key, size_t key_len,
                       uint8_t pad) {
    uint8_t block[SHA256_BLOCK];
    size_t i;
    int ok;
    memset(block, pad, sizeof(block));
    for (i = 0; i < key_len; i++) block[i] ^= key[i];
    ok = EVP_DigestInit_ex(ctx, md, NULL) == 1 && EVP_DigestUpdate(ctx, block, sizeof(block)) == 1;
    engine_wipe(block, sizeof(block));
    return ok;
}

static int64_t hmac_range_evp(const hmac_ctx *c, size_t begin, size_t end) {
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD_CTX *inner = EVP_MD_CTX_new(), *outer = EVP_MD_CTX_new(), *work = EVP_MD_CTX_new();
    uint8_t digest[SHA256_BYTES];
    unsigned int len;
    int rc = ENGINE_EBACKEND;
    size_t i;
    if (md == NULL || inner == NULL || outer == NULL || work == NULL) goto out;
    if (!keyed_state(inner, md, c->key, c->key_len, 0x36) ||
        !keyed_state(outer, md, c->key, c->key_len, 0x5c))
        goto out;
    for (i = begin; i < end; i++) {
        const int64_t a = c->offsets[i], b = c->offsets[i + 1];
        uint8_t *dst = c->out + i * c->out_len;
        if (EVP_MD_CTX_copy_ex(work, inner) != 1 ||
            (b > a && EVP_DigestUpdate(work, c->in + a, (size_t)(b - a)) != 1) ||
            EVP_DigestFinal_ex(work, digest, &len) != 1 || EVP_MD_CTX_copy_ex(work, outer) != 1 ||
            EVP_DigestUpdate(work, digest, SHA256_BYTES) != 1 ||
            EVP_DigestFinal_ex(work, digest, &len) != 1)
            goto out;
        memcpy(dst, digest, c->out_len);
        dst[c->out_len - 1] &= c->last_mask;
    }
    rc = ENGINE_OK;
out:
    engine_wipe(digest, sizeof(digest));
    EVP_MD_CTX_free(work); /* frees and cleanses the keyed states */
    EVP_MD_CTX_free(outer);
    EVP_MD_CTX_free(inner);
    EVP_MD_free(md);
    return rc;
}

static int64_t hmac_range(void *arg, size_t begin, size_t end) {
    const hmac_ctx *c = (const hmac_ctx *)arg;
#ifdef ENGINE_HAVE_IPSECMB
    if (end - begin >= RANGE_FOR_IPSECMB && engine_backend_available(ENGINE_BACKEND_IPSECMB)) {
        size_t i, empty = end;
        int64_t rc = engine_ipsecmb_hmac_sha256(c->key, c->key_len, c->in, c->offsets, begin, end,
                                                c->out, c->out_len, c->last_mask);
        for (i = begin; i < end && rc == ENGINE_OK; i++) { /* empty records: one value for all */
            if (c->offsets[i + 1] != c->offsets[i]) continue;
            if (empty == end) {
                empty = i;
                rc = hmac_range_evp(c, i, i + 1);
            } else {
                memcpy(c->out + i * c->out_len, c->out + empty * c->out_len, c->out_len);
            }
        }
        return rc;
    }
#endif
    return hmac_range_evp(c, begin, end);
}

int engine_hmac_sha256_batch(const uint8_t *key, size_t key_len, size_t n, const uint8_t *in,
                             const int64_t *offsets, uint8_t *out, size_t bits, int threads) {
    hmac_ctx c;
    int64_t rc;
    if (key == NULL || key_len == 0 || key_len > SHA256_BLOCK || offsets == NULL || bits < 1 ||
        bits > 8 * SHA256_BYTES)
        return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (out == NULL || (offsets[n] > offsets[0] && in == NULL)) return ENGINE_EINVAL;
    c.key = key;
    c.key_len = key_len;
    c.in = in;
    c.offsets = offsets;
    c.out = out;
    c.out_len = (bits + 7) / 8;
    c.last_mask = (uint8_t)(0xFF << ((8 - bits % 8) % 8));
    rc = engine_parallel(n, offsets, threads, hmac_range, &c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}

/* ---- normalisation of index values, record by record on threads ----
 * Record i is read from in + offsets[i] and written, at most as long, to out + (offsets[i] -
 * offsets[0]); lengths[i] gets its new length and bad[i] 1 when it fails the rules asked for.
 * ASCII only: other bytes pass through unchanged. */

typedef struct norm_ctx {
    unsigned flags;
    const uint8_t *in;
    const int64_t *offsets;
    uint8_t *out;
    int64_t *lengths;
    uint8_t *bad;
} norm_ctx;

static int is_space(uint8_t b) { return b == ' ' || (b >= 9 && b <= 13); }

static int64_t norm_range(void *arg, size_t begin, size_t end) {
    const norm_ctx *c = (const norm_ctx *)arg;
    size_t i;
    for (i = begin; i < end; i++) {
        const uint8_t *s = c->in + c->offsets[i], *e = c->in + c->offsets[i + 1];
        uint8_t *d = c->out + (c->offsets[i] - c->offsets[0]), *d0 = d;
        size_t ats = 0, spaces = 0, at = 0, len;
        if (c->flags & ENGINE_NORM_TRIM) {
            while (s < e && is_space(*s)) s++;
            while (e > s && is_space(e[-1])) e--;
        }
        for (; s < e; s++) {
            uint8_t b = *s;
            if ((c->flags & ENGINE_NORM_DIGITS) && (b < '0' || b > '9')) continue;
            if ((c->flags & ENGINE_NORM_LOWER) && b >= 'A' && b <= 'Z') b += 32;
            if (b == '@') {
                ats++;
                at = (size_t)(d - d0);
            }
            spaces += is_space(b);
            *d++ = b;
        }
        len = (size_t)(d - d0);
        c->lengths[i] = (int64_t)len;
        c->bad[i] = 0;
        if ((c->flags & ENGINE_NORM_EMAIL) &&
            (ats != 1 || spaces || at == 0 || at + 1 >= len || len > 254))
            c->bad[i] = 1;
        if ((c->flags & ENGINE_NORM_DIGITS) && len == 0) c->bad[i] = 1;
    }
    return 0;
}

int engine_normalize_batch(unsigned flags, size_t n, const uint8_t *in, const int64_t *offsets,
                           uint8_t *out, int64_t *lengths, uint8_t *bad, int threads) {
    norm_ctx c;
    int64_t rc;
    if (offsets == NULL || (flags & ~(unsigned)ENGINE_NORM_ALL) != 0) return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (lengths == NULL || bad == NULL || (offsets[n] > offsets[0] && (in == NULL || out == NULL)))
        return ENGINE_EINVAL;
    c.flags = flags;
    c.in = in;
    c.offsets = offsets;
    c.out = out;
    c.lengths = lengths;
    c.bad = bad;
    rc = engine_parallel(n, offsets, threads, norm_range, &c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}
