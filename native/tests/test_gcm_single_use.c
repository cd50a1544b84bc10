/* The ipsec-mb backend's own GCM for XAES-256-GCM message keys (src/gcm_single_use.c), against
 * independent implementations:
 *  - engine_gcm_single_use against ipsec-mb's AES-256-GCM (its key set-up and GCM code), sealing
 *    and opening, in place and apart, over random text and AAD lengths up to 4 KiB;
 *  - the backend's xaes_pair (two messages at once, key derivation included) against the public
 *    single-message XAES call, for every text and AAD length from 0 to 64 bytes, and a tag that
 *    fails when one bit of a pair's message, AAD or nonce changes;
 *  - a worker's wipe: no expanded message key outlives it, whichever path its last message took. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <intel-ipsec-mb.h>

#include "backend.h"

static int failures;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (failures++ < 20) {                                                                 \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
                fprintf(stderr, __VA_ARGS__);                                                      \
                fputc('\n', stderr);                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static uint64_t g_state = 0x9e3779b97f4a7c15ULL;
static uint32_t next_random(void) { /* xorshift64*: test data, not keys */
    g_state ^= g_state >> 12, g_state ^= g_state << 25, g_state ^= g_state >> 27;
    return (uint32_t)((g_state * 0x2545f4914f6cdd1dULL) >> 32);
}
static void fill(uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)next_random();
}

enum { MAX_TEXT = 4200, MAX_AAD = 300 };

static void against_ipsecmb(void) {
    IMB_MGR *mgr = alloc_mb_mgr(0);
    static struct gcm_key_data kd __attribute__((aligned(64)));
    struct gcm_context_data ctx;
    static uint8_t in[MAX_TEXT], want[MAX_TEXT], got[MAX_TEXT], aad[MAX_AAD];
    uint8_t key[32], nonce[12], want_tag[16], tag[16];
    int i;
    init_mb_mgr_auto(mgr, NULL);
    for (i = 0; i < 20000; i++) {
        const size_t len = next_random() % (i % 4 ? 300 : MAX_TEXT);
        const size_t aad_len = next_random() % (i % 3 ? 70 : MAX_AAD);
        fill(key, 32), fill(nonce, 12), fill(in, len), fill(aad, aad_len);
        if (i % 5 == 0) memset(nonce + 8, 0xff, 4); /* a counter about to wrap */
        IMB_AES256_GCM_PRE(mgr, key, &kd);
        IMB_AES256_GCM_ENC(mgr, &kd, &ctx, want, in, len, nonce, aad, aad_len, want_tag, 16);
        engine_gcm_single_use(1, key, got, in, len, nonce, aad, aad_len, tag);
        CHECK(memcmp(got, want, len) == 0 && memcmp(tag, want_tag, 16) == 0,
              "seal differs from ipsec-mb: text %zu, aad %zu", len, aad_len);
        engine_gcm_single_use(0, key, got, got, len, nonce, aad, aad_len, tag); /* in place */
        CHECK(memcmp(got, in, len) == 0 && memcmp(tag, want_tag, 16) == 0,
              "open differs: text %zu, aad %zu", len, aad_len);
    }
    free_mb_mgr(mgr);
}

static void pair_against_single(int backend) {
    static uint8_t in[2][64], out[2][64], aad[2][64], nonce[2][24], tag[2][16];
    uint8_t raw[32], want[64], want_tag[16], computed[2][16];
    engine_key *key;
    engine_message m[2];
    size_t len, aad_len;
    int j;
    fill(raw, 32);
    if (engine_key_new_alg(&key, backend, ENGINE_ALG_XAES_GCM, raw) != ENGINE_OK) {
        CHECK(0, "XAES key");
        return;
    }
    CHECK(key->ops->xaes_pair != NULL && ENGINE_XAES_PAIR_MAX_BYTES == 64, "no pair path");
    for (len = 0; len <= 64; len++) {
        for (aad_len = 0; aad_len <= 64; aad_len++) {
            for (j = 0; j < 2; j++) { /* the second message's sizes run the other way */
                m[j] = (engine_message){in[j], out[j], j ? 64 - len : len, nonce[j], 24, tag[j],
                                        aad[j], j ? 64 - aad_len : aad_len};
                fill(in[j], 64), fill(aad[j], 64), fill(nonce[j], 24);
            }
            key->ops->xaes_pair(key, 1, m, computed);
            for (j = 0; j < 2; j++) {
                CHECK(engine_seal(key, want, want_tag, in[j], m[j].len, nonce[j], 24, aad[j],
                                  m[j].aad_len) == ENGINE_OK &&
                          memcmp(out[j], want, m[j].len) == 0 && memcmp(tag[j], want_tag, 16) == 0,
                      "pair seal differs: text %zu, aad %zu", (size_t)m[j].len,
                      (size_t)m[j].aad_len);
                m[j].in = out[j]; /* open in place */
            }
            key->ops->xaes_pair(key, 0, m, computed);
            for (j = 0; j < 2; j++) {
                CHECK(memcmp(out[j], in[j], m[j].len) == 0 && memcmp(computed[j], tag[j], 16) == 0,
                      "pair open differs: text %zu, aad %zu", (size_t)m[j].len,
                      (size_t)m[j].aad_len);
                m[j].in = in[j];
            }
        }
    }
    /* One flipped bit of a message, its AAD or its nonce changes that message's tag only. */
    for (j = 0; j < 3; j++) {
        uint8_t sealed_tags[2][16];
        m[0] = (engine_message){in[0], out[0], 40, nonce[0], 24, tag[0], aad[0], 20};
        m[1] = (engine_message){in[1], out[1], 64, nonce[1], 24, tag[1], aad[1], 64};
        key->ops->xaes_pair(key, 1, m, computed);
        memcpy(sealed_tags, tag, sizeof(sealed_tags));
        m[0].in = out[0], m[1].in = out[1];
        if (j == 0) out[0][39] ^= 0x80;
        if (j == 1) aad[0][0] ^= 1;
        if (j == 2) nonce[0][23] ^= 1;
        key->ops->xaes_pair(key, 0, m, computed);
        CHECK(memcmp(computed[0], sealed_tags[0], 16) != 0, "flip %d not detected", j);
        CHECK(memcmp(computed[1], sealed_tags[1], 16) == 0 && memcmp(out[1], in[1], 64) == 0,
              "flip %d in one message changed the other", j);
    }
    engine_key_free(key);
}

/* A long XAES message's key is expanded into the worker by ipsec-mb; a short message after it
 * takes gcm_single_use.c. Freeing the worker must still wipe the long message's expanded key. */
static void worker_wipes_every_message_key(void) {
    static struct gcm_key_data kd __attribute__((aligned(64)));
    IMB_MGR *mgr = alloc_mb_mgr(0);
    uint8_t raw[32], other[32];
    engine_key *key;
    engine_worker w;
    size_t i;
    int found = 0;
    fill(raw, 32), fill(other, 32);
    init_mb_mgr_auto(mgr, NULL);
    IMB_AES256_GCM_PRE(mgr, raw, &kd); /* kd.expanded_keys + 32: round key 2, not in `raw` */
    if (engine_key_new_alg(&key, ENGINE_BACKEND_IPSECMB, ENGINE_ALG_XAES_GCM, other) != ENGINE_OK) {
        CHECK(0, "XAES key");
        free_mb_mgr(mgr);
        return;
    }
    memset(&w, 0, sizeof(w));
    CHECK(key->ops->worker_init(key, &w) == ENGINE_OK, "worker_init");
    key->ops->set_message_key(&w, raw, 1000);
    key->ops->set_message_key(&w, other, 10);
    key->ops->worker_free(&w);
    for (i = 0; i + 16 <= sizeof(w.inline_state); i++)
        found |= memcmp(w.inline_state + i, kd.expanded_keys + 32, 16) == 0;
    CHECK(!found, "a long message's expanded key outlived the worker");
    engine_key_free(key);
    free_mb_mgr(mgr);
}

int main(void) {
    if (!engine_backend_available(ENGINE_BACKEND_IPSECMB)) {
        fprintf(stderr, "the ipsec-mb backend is not available\n");
        return 1;
    }
    against_ipsecmb();
    pair_against_single(ENGINE_BACKEND_IPSECMB);
    worker_wipes_every_message_key();
    printf("gcm_single_use: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
