/* Known-answer tests for one backend (argv[1]: "openssl" or "ipsec-mb"): the AES-256 test cases 13,
 * 14, 16 and 18 of McGrew & Viega, "The Galois/Counter Mode of Operation" (the GCM specification),
 * through the single-message and batch calls, plus tamper and in-place checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "engine_aead.h"

typedef struct {
    const char *name, *key, *iv, *pt, *aad, *ct, *tag;
} kat;

#define K16 "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
#define P16                                                                                        \
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b5" \
    "25b16aedf5aa0de657ba637b39"
#define A16 "feedfacedeadbeeffeedfacedeadbeefabaddad2"

static const kat KATS[] = {
    {"tc13", "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
    {"tc14", "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "00000000000000000000000000000000", "",
     "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
    {"tc16", K16, "cafebabefacedbaddecaf888", P16, A16,
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b105682"
     "8838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"},
    {"tc18", K16,
     "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728c3c0c95156809539fcf0e2429a6b"
     "525416aedbf5a0de6a57a637b39b",
     P16, A16,
     "5a8def2f0c9e53f1f75d7853659e2a20eeb2b22aafde6419a058ab4f6f746bf40fc0c3b780f244452da3ebf1c5d8"
     "2cdea2418997200ef82e44ae7e3f",
     "a44a8266ee1c8eb0c8b5d4cf5ae9f19a"},
};

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static size_t unhex(const char *s, uint8_t *out) {
    size_t n = strlen(s) / 2, i;
    for (i = 0; i < n; i++) sscanf(s + 2 * i, "%2hhx", &out[i]);
    return n;
}

static void run_kat(int backend, const kat *t) {
    uint8_t key[32], iv[128], pt[128], aad[64], ct[128], tag[16], out[128], otag[16], back[128];
    size_t ivl = unhex(t->iv, iv), ptl = unhex(t->pt, pt), aadl = unhex(t->aad, aad);
    engine_key *k;
    int64_t offsets[2] = {0, (int64_t)ptl};
    uint8_t failed = 9;
    unhex(t->key, key);
    unhex(t->ct, ct);
    unhex(t->tag, tag);
    CHECK(engine_key_new(&k, backend, key) == ENGINE_OK, "%s: key_new", t->name);

    CHECK(engine_seal(k, out, otag, pt, ptl, iv, ivl, aad, aadl) == ENGINE_OK, "%s: seal", t->name);
    CHECK(memcmp(out, ct, ptl) == 0 && memcmp(otag, tag, 16) == 0, "%s: seal output", t->name);
    CHECK(engine_open(k, back, ct, ptl, tag, iv, ivl, aad, aadl) == ENGINE_OK, "%s: open", t->name);
    CHECK(memcmp(back, pt, ptl) == 0, "%s: open output", t->name);

    /* batch of one, given nonce, in place */
    memcpy(out, pt, ptl);
    CHECK(engine_seal_batch(k, 1, out, offsets, out, iv, ivl, 0, otag, aad, NULL, aadl, 2) ==
              ENGINE_OK,
          "%s: seal_batch", t->name);
    CHECK(memcmp(out, ct, ptl) == 0 && memcmp(otag, tag, 16) == 0, "%s: seal_batch output", t->name);
    CHECK(engine_open_batch(k, 1, out, offsets, out, iv, ivl, tag, aad, NULL, aadl, &failed, 2) == 0,
          "%s: open_batch", t->name);
    CHECK(failed == 0 && memcmp(out, pt, ptl) == 0, "%s: open_batch output", t->name);

    /* a flipped tag bit: authentication fails and no plaintext comes out */
    tag[0] ^= 1;
    memset(back, 0xAA, sizeof(back));
    CHECK(engine_open(k, back, ct, ptl, tag, iv, ivl, aad, aadl) == ENGINE_EAUTH, "%s: tamper",
          t->name);
    for (size_t i = 0; i < ptl; i++) CHECK(back[i] == 0, "%s: output not zeroed", t->name);
    CHECK(engine_open_batch(k, 1, ct, offsets, back, iv, ivl, tag, aad, NULL, aadl, &failed, 1) == 1 &&
              failed == 1,
          "%s: batch tamper", t->name);
    /* in place, a failed record keeps its ciphertext; an output shifted by a byte is refused */
    memcpy(out, ct, ptl);
    CHECK(engine_open_batch(k, 1, out, offsets, out, iv, ivl, tag, aad, NULL, aadl, &failed, 2) ==
                  1 &&
              failed == 1 && memcmp(out, ct, ptl) == 0,
          "%s: a failed in-place open changed the ciphertext", t->name);
    if (ptl > 1) {
        CHECK(engine_seal_batch(k, 1, out, offsets, out + 1, iv, ivl, 0, otag, aad, NULL, aadl, 1) ==
                  ENGINE_EOVERLAP,
              "%s: shifted seal output accepted", t->name);
        CHECK(engine_open_batch(k, 1, out + 1, offsets, out, iv, ivl, tag, aad, NULL, aadl, &failed,
                                1) == ENGINE_EOVERLAP,
              "%s: shifted open output accepted", t->name);
    }
    engine_key_free(k);
}

/* RFC 4648 section 10 test vectors (base64url has the same output for these inputs), with a
 * prefix, then decoded back; and tokens sealed then opened and checked against the
 * single-message call with the nonce the token carries. */
static void run_bulk(int backend) {
    static const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *coded = "p:p:Zgp:Zm8p:Zm9vp:Zm9vYgp:Zm9vYmEp:Zm9vYmFy";
    uint8_t in[64], out[128], back[64], status[7], key[32] = {7}, tokens[7 * 40], single[64];
    int64_t off[8], out_off[8], back_off[8], starts[7];
    size_t i, at = 0, enc_at = 0, dec_at = 0;
    engine_key *k;
    for (i = 0; i < 7; i++) {
        size_t len = strlen(plain[i]);
        off[i] = (int64_t)at;
        out_off[i] = (int64_t)enc_at;
        back_off[i] = (int64_t)dec_at;
        memcpy(in + at, plain[i], len);
        at += len;
        enc_at += 2 + (len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0));
        dec_at += len;
    }
    off[7] = (int64_t)at;
    out_off[7] = (int64_t)enc_at;
    back_off[7] = (int64_t)dec_at;
    CHECK(engine_b64url_encode_batch(7, in, off, (const uint8_t *)"p:", 2, out, out_off, 2) ==
              ENGINE_OK && memcmp(out, coded, enc_at) == 0,
          "base64url encode vectors");
    CHECK(engine_b64url_decode_batch(7, out, out_off, (const uint8_t *)"p:", 2, back, back_off,
                                     status, 1) == 0 && memcmp(back, in, dec_at) == 0,
          "base64url decode vectors");

    CHECK(engine_key_new(&k, backend, key) == ENGINE_OK, "key_new");
    for (i = 0, at = 0; i < 7; i++) {
        starts[i] = (int64_t)at;
        at += 4 + 12 + (size_t)(off[i + 1] - off[i]) + 16;
    }
    CHECK(engine_seal_tokens(k, 7, in, off, (const uint8_t *)"HDR1", 4, 1, 12, tokens, starts,
                             NULL, NULL, 0, 2) == ENGINE_OK, "seal_tokens");
    for (i = 0; i < 7; i++) {
        size_t len = (size_t)(off[i + 1] - off[i]);
        uint8_t *tok = tokens + starts[i], tag[16];
        CHECK(memcmp(tok, "HDR1", 4) == 0, "token header");
        CHECK(engine_seal(k, single, tag, in + off[i], len, tok + 4, 12, tok, 4) == ENGINE_OK &&
                  memcmp(single, tok + 16, len) == 0 && memcmp(tag, tok + 16 + len, 16) == 0,
              "token matches the single-message result");
    }
    {
        int64_t tok_off[8], plain_starts[7];
        uint8_t failed[7];
        for (i = 0; i < 7; i++) {
            tok_off[i] = starts[i];
            plain_starts[i] = off[i];
        }
        tok_off[7] = (int64_t)at;
        CHECK(engine_open_tokens(k, 7, tokens, tok_off, 4, 1, 12, back, plain_starts, NULL, NULL, 0,
                                 failed, 2) == 0 && memcmp(back, in, dec_at) == 0,
              "open_tokens");
        tokens[starts[3]] ^= 1; /* an edited header is an authentication failure */
        CHECK(engine_open_tokens(k, 7, tokens, tok_off, 4, 1, 12, back, plain_starts, NULL, NULL, 0,
                                 failed, 1) == 1 && failed[3] == 1,
              "edited token header detected");
    }
    engine_key_free(k);
}

/* engine_key_derive: HKDF-Expand-SHA512 from a handle into a new handle. The expected values were
 * computed with pyca/cryptography (HKDFExpand(SHA512) and AESGCM): with input key 00..1f and the
 * chunked-encryption info (Cobblestone-256, salt 40..57, context "ctx"), the public okm[32..76)
 * and the AES-GCM sealing of 16 zero bytes under okm[0..32) and nonce okm[32..44); then 224
 * extra bytes over a 3000-byte info (longer than OpenSSL's own HKDF accepts). */
static void run_derive(int backend) {
    static const char *info1 =
        "633273702e6f72672f6368756e6b65642d656e6372797074696f6e4076312b414541445f4145535f3235"
        "365f47434d00404142434445464748494a4b4c4d4e4f5051525354555657637478";
    static const char *extra1 =
        "7ee3561558fce50d11618af066f10a04ed5e793eff41a016ce3ed315537a0c0b80101733e0489269a15d"
        "fbdf";
    static const char *sealed1 = "be199059558c79c3b0eb58e5ac88bd5f9fd0512cbbfdcce0a6140e23173ff8e6";
    static const char *extra2 =
        "6b6ac563251176e612f1dcd04de5560fa4b0d02d58226ea7697f5c31281eecd95024ef380a124602b3a8"
        "efd06550daf1a00a85eba5e48c5f2348eda691f2686f41c9238e26fb4a376ba0932577153ee4478258f7"
        "3f8288bb67eaf83d2b0050921271a8e98943ab75d8e26324cdcd6abdd094978a5658820a433d08f11ac2"
        "0602f601df9546bcb2015f1acb66e3dce6581667279da0b980518d5d20a81e6c407c6def23c9db87c32e"
        "b224bc7767e155a8b48cf363a02c6aecfdf1042f7c23fd257fcdc4f5590a7e9ead9332109ce317018089"
        "b30596c4bec2dd08c65fd979cf76";
    static const char *tag2 = "d32be5acb2b8851daf46ff2bbca888a2";
    uint8_t key[32], info[3000], extra[ENGINE_DERIVE_EXTRA_MAX], want[ENGINE_DERIVE_EXTRA_MAX];
    uint8_t zeros[16] = {0}, out[16], tag[16], want_sealed[32], nonce[12] = {0};
    engine_key *k, *d;
    size_t i, info_len = unhex(info1, info);
    for (i = 0; i < 32; i++) key[i] = (uint8_t)i;
    CHECK(engine_key_new(&k, backend, key) == ENGINE_OK, "derive: key_new");
    CHECK(engine_key_derive(&d, k, info, info_len, extra, 44) == ENGINE_OK, "derive");
    unhex(extra1, want);
    CHECK(memcmp(extra, want, 44) == 0, "derive: base nonce and commitment");
    CHECK(engine_key_backend(d) == backend, "derive: same backend");
    unhex(sealed1, want_sealed);
    CHECK(engine_seal(d, out, tag, zeros, 16, extra, 12, NULL, 0) == ENGINE_OK &&
              memcmp(out, want_sealed, 16) == 0 && memcmp(tag, want_sealed + 16, 16) == 0,
          "derive: the derived key seals as cryptography's");
    engine_key_free(d);
    for (i = 0; i < sizeof(info); i++) info[i] = (uint8_t)(i % 251);
    CHECK(engine_key_derive(&d, k, info, sizeof(info), extra, ENGINE_DERIVE_EXTRA_MAX) == ENGINE_OK,
          "derive: long info");
    unhex(extra2, want);
    CHECK(memcmp(extra, want, ENGINE_DERIVE_EXTRA_MAX) == 0, "derive: long info okm");
    unhex(tag2, want_sealed);
    CHECK(engine_seal(d, out, tag, zeros, 0, nonce, 12, NULL, 0) == ENGINE_OK &&
              memcmp(tag, want_sealed, 16) == 0,
          "derive: long info key");
    engine_key_free(d);
    d = (engine_key *)1;
    CHECK(engine_key_derive(&d, k, info, 10, extra, ENGINE_DERIVE_EXTRA_MAX + 1) == ENGINE_EINVAL &&
              d == (engine_key *)1,
          "derive: too much extra output refused");
    CHECK(engine_key_derive(&d, k, NULL, 1, extra, 0) == ENGINE_EINVAL, "derive: NULL info");
    engine_key_free(k);
}

/* XAES-256-GCM: the two vectors of c2sp.org/XAES-256-GCM, through the single-message call, a
 * batch (given nonces, in place), a batch with a key per record and a token; then tampering,
 * and nonces of the wrong size refused. */
typedef struct {
    const char *key, *aad, *sealed;
} xaes_kat;

static const xaes_kat XAES_KATS[] = {
    {"0101010101010101010101010101010101010101010101010101010101010101", "",
     "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"},
    {"0303030303030303030303030303030303030303030303030303030303030303", "c2sp.org/XAES-256-GCM",
     "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d"},
};

static void run_xaes(int backend) {
    static const uint8_t nonce[24] = "ABCDEFGHIJKLMNOPQRSTUVWX", pt[12] = "XAES-256-GCM";
    uint8_t key[64], want[28], out[28], tag[16], back[12], failed = 9, token[4 + 24 + 28];
    int64_t offsets[2] = {0, 12}, token_off[2] = {0, sizeof(token)}, zero = 0;
    engine_key *k;
    size_t i;
    for (i = 0; i < sizeof(XAES_KATS) / sizeof(XAES_KATS[0]); i++) {
        const xaes_kat *t = &XAES_KATS[i];
        const uint8_t *aad = (const uint8_t *)t->aad;
        const size_t aadl = strlen(t->aad);
        unhex(t->key, key);
        unhex(t->sealed, want);
        CHECK(engine_key_new_alg(&k, backend, ENGINE_ALG_XAES_GCM, key) == ENGINE_OK &&
                  engine_key_algorithm(k) == ENGINE_ALG_XAES_GCM,
              "xaes %zu: key_new", i);
        CHECK(engine_seal(k, out, tag, pt, 12, nonce, 24, aad, aadl) == ENGINE_OK &&
                  memcmp(out, want, 12) == 0 && memcmp(tag, want + 12, 16) == 0,
              "xaes %zu: seal", i);
        CHECK(engine_open(k, back, want, 12, want + 12, nonce, 24, aad, aadl) == ENGINE_OK &&
                  memcmp(back, pt, 12) == 0,
              "xaes %zu: open", i);
        memcpy(out, pt, 12);
        CHECK(engine_seal_batch(k, 1, out, offsets, out, (uint8_t *)nonce, 24, 0, tag, aad, NULL,
                                aadl, 2) == ENGINE_OK &&
                  memcmp(out, want, 12) == 0 && memcmp(tag, want + 12, 16) == 0,
              "xaes %zu: seal_batch", i);
        CHECK(engine_open_batch(k, 1, out, offsets, out, nonce, 24, tag, aad, NULL, aadl, &failed,
                                1) == 0 &&
                  failed == 0 && memcmp(out, pt, 12) == 0,
              "xaes %zu: open_batch", i);
        memset(out, 0, sizeof(out));
        CHECK(engine_seal_batch_keys(backend, ENGINE_ALG_XAES_GCM, 1, key, pt, offsets, out, nonce,
                                     24, tag, aad, NULL, aadl, 1) == ENGINE_OK &&
                  memcmp(out, want, 12) == 0 && memcmp(tag, want + 12, 16) == 0,
              "xaes %zu: seal_batch_keys", i);
        CHECK(engine_open_batch_keys(backend, ENGINE_ALG_XAES_GCM, 1, key, want, offsets, back,
                                     nonce, 24, want + 12, aad, NULL, aadl, &failed, 1) == 0 &&
                  memcmp(back, pt, 12) == 0,
              "xaes %zu: open_batch_keys", i);
        /* a token: header || 24-byte nonce || ciphertext || tag, opened and checked */
        CHECK(engine_seal_tokens(k, 1, pt, offsets, (const uint8_t *)"HDR1", 4, 1, 24, token, &zero,
                                 aad, NULL, aadl, 1) == ENGINE_OK,
              "xaes %zu: seal_tokens", i);
        CHECK(engine_open_tokens(k, 1, token, token_off, 4, 1, 24, back, &zero, aad, NULL, aadl,
                                 &failed, 1) == 0 &&
                  memcmp(back, pt, 12) == 0,
              "xaes %zu: open_tokens", i);
        /* tampering: the last nonce byte (GCM's nonce) and the first (the key derivation) */
        memcpy(out, want, 28);
        for (size_t at = 0; at < 24; at += 23) {
            uint8_t bad[24];
            memcpy(bad, nonce, 24);
            bad[at] ^= 1;
            memset(back, 0xAA, sizeof(back));
            CHECK(engine_open(k, back, want, 12, want + 12, bad, 24, aad, aadl) == ENGINE_EAUTH &&
                      back[0] == 0 && back[11] == 0,
                  "xaes %zu: nonce byte %zu tampered", i, at);
        }
        CHECK(engine_open_batch_keys(backend, ENGINE_ALG_XAES_GCM, 1, key, out, offsets, out, nonce,
                                     24, want + 12, aad, NULL, aadl + 1, &failed, 1) == 1 &&
                  failed == 1 && memcmp(out, want, 12) == 0,
              "xaes %zu: a failed in-place open kept the ciphertext", i);
        /* XAES takes 24-byte nonces only; AES-GCM calls take any other size as before */
        CHECK(engine_seal(k, out, tag, pt, 12, nonce, 16, NULL, 0) == ENGINE_EINVAL &&
                  engine_seal_batch(k, 1, out, offsets, out, (uint8_t *)nonce, 12, 0, tag, NULL,
                                    NULL, 0, 1) == ENGINE_EINVAL &&
                  engine_seal_tokens(k, 1, pt, offsets, NULL, 0, 0, 16, token, &zero, NULL, NULL,
                                     0, 1) == ENGINE_EINVAL,
              "xaes %zu: a nonce that is not 24 bytes was accepted", i);
        engine_key_free(k);
    }
    CHECK(engine_key_new_alg(&k, backend, 7, key) == ENGINE_EINVAL, "unknown algorithm accepted");
    CHECK(engine_seal_batch_keys(backend, 7, 1, key, pt, offsets, out, nonce, 24, tag, NULL, NULL, 0,
                                 1) == ENGINE_EINVAL,
          "seal_batch_keys: unknown algorithm accepted");
    CHECK(engine_seal_batch_keys(backend, ENGINE_ALG_XAES_GCM, 1, key, key, offsets, key, nonce, 24,
                                 tag, NULL, NULL, 0, 1) == ENGINE_EOVERLAP,
          "seal_batch_keys: output over the keys accepted");
}

/* HMAC-SHA-256 (blind indexes): RFC 4231 test cases 1 and 2 in one batch, and truncation. */
static void run_hmac(void) {
    static const char *tc1 = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7";
    static const char *tc2 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    uint8_t key1[20], want[32], out[2 * 32], data[64];
    int64_t off1[2] = {0, 8}, off2[3] = {0, 28, 28};
    memset(key1, 0x0b, sizeof(key1));
    memcpy(data, "Hi There", 8);
    unhex(tc1, want);
    CHECK(engine_hmac_sha256_batch(key1, 20, 1, data, off1, out, 256, 1) == ENGINE_OK &&
              memcmp(out, want, 32) == 0,
          "hmac: RFC 4231 test case 1");
    memcpy(data, "what do ya want for nothing?", 28);
    unhex(tc2, want);
    CHECK(engine_hmac_sha256_batch((const uint8_t *)"Jefe", 4, 2, data, off2, out, 12, 2) ==
                  ENGINE_OK &&
              out[0] == want[0] && out[1] == (want[1] & 0xF0) && out[2] == 0x92 && out[3] == 0x30,
          "hmac: RFC 4231 test case 2 and an empty record (Python's hmac: 9235...), 12 bits");
    {   /* a batch large enough for ipsec-mb's multi-buffer path, against one record at a time */
        enum { N = 10000 };
        static uint8_t many[N * 40], tags[N * 4], one[4];
        static int64_t offs[N + 1];
        size_t i, bad = 0;
        for (i = 0; i < N * 40; i++) many[i] = (uint8_t)(i * 131 + 7);
        for (i = 0; i < N; i++) offs[i] = (int64_t)(i * 40 - (i % 7) * 5); /* uneven lengths */
        offs[101] = offs[100];                                              /* and empty ones */
        offs[5001] = offs[5000];
        offs[N] = N * 40;
        CHECK(engine_hmac_sha256_batch(key1, 20, N, many, offs, tags, 30, 2) == ENGINE_OK,
              "hmac: large batch");
        for (i = 0; i < N; i++) {
            if (engine_hmac_sha256_batch(key1, 20, 1, many, offs + i, one, 30, 1) != ENGINE_OK ||
                memcmp(one, tags + 4 * i, 4) != 0)
                bad++;
        }
        CHECK(bad == 0, "hmac: %zu records of the large batch differ from single calls", bad);
    }
    CHECK(engine_hmac_sha256_batch(key1, 20, 1, data, off1, out, 0, 1) == ENGINE_EINVAL &&
              engine_hmac_sha256_batch(key1, 20, 1, data, off1, out, 257, 1) == ENGINE_EINVAL &&
              engine_hmac_sha256_batch(key1, 65, 1, data, off1, out, 8, 1) == ENGINE_EINVAL,
          "hmac: bad sizes accepted");
}

/* engine_chunks_seal / engine_chunks_open (C2SP chunked encryption). Expected values: the GCM
 * specification's test case 15 (AES-256, 12-byte IV, no AAD), as the short final chunk of a run
 * whose base nonce XOR that chunk's index (5) is the test's IV; and the SHA-256 of a three-chunk
 * run ending at the last index allowed (2^38 - 1), key 00..1f, base nonce a0..ab, plaintext byte
 * k = k mod 251, computed with pyca/cryptography (AESGCM, one call per chunk). */
#define CHUNK ENGINE_CHUNK_BYTES
#define SEALED ENGINE_CHUNK_SEALED_BYTES
static int all_zero(const uint8_t *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i] != 0) return 0;
    return 1;
}

static void run_chunks(int backend) {
    static const char *tc15_pt =
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6"
        "b525b16aedf5aa0de657ba637b391aafd255";
    static const char *tc15_sealed =
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b105682"
        "8838c5f61e6393ba7a0abcc9f662898015adb094dac5d93471bdec1a502270e3cc6c";
    static const char *run_sha256 = "a42c8d9a77e9bd1061f1a6efba9c86d47232fa6b192b7299a6a96eec64086a3a";
    const uint64_t last_index = (1ULL << 38) - 1, len = 2 * CHUNK + 100;
    uint8_t key[32], base[12], expect[96], digest[32], want[32], pt[64];
    uint8_t *plain = malloc(3 * CHUNK), *sealed = malloc(3 * SEALED), *back = malloc(3 * CHUNK);
    engine_key *k, *x;
    unsigned int dlen = 0;
    size_t i;
    if (plain == NULL || sealed == NULL || back == NULL) {
        CHECK(0, "chunks: out of memory");
        goto out;
    }
    for (i = 0; i < 32; i++) key[i] = (uint8_t)i;
    for (i = 0; i < 12; i++) base[i] = (uint8_t)(0xa0 + i);
    for (i = 0; i < len; i++) plain[i] = (uint8_t)(i % 251);
    CHECK(engine_key_new(&k, backend, key) == ENGINE_OK, "chunks: key_new");
    CHECK(engine_chunks_seal(k, base, last_index - 2, 3, plain, len, sealed, 2) == ENGINE_OK &&
              EVP_Digest(sealed, len + 3 * 16, digest, &dlen, EVP_sha256(), NULL) == 1 &&
              unhex(run_sha256, want) == 32 && memcmp(digest, want, 32) == 0,
          "chunks: three-chunk run up to index 2^38 - 1");
    CHECK(engine_chunks_open(k, base, last_index - 2, 3, sealed, len + 3 * 16, back, 2) == 3 &&
              memcmp(back, plain, len) == 0,
          "chunks: the run opens");
    CHECK(engine_chunks_seal(k, base, last_index - 1, 3, plain, len, sealed, 1) == ENGINE_EINVAL,
          "chunks: an index of 2^38 is refused");
    CHECK(engine_chunks_seal(k, base, 0, 3, plain, 2 * CHUNK - 1, sealed, 1) == ENGINE_EINVAL &&
              engine_chunks_seal(k, base, 0, 3, plain, 3 * CHUNK + 1, sealed, 1) == ENGINE_EINVAL &&
              engine_chunks_open(k, base, 0, 3, sealed, 2 * SEALED + 15, back, 1) == ENGINE_EINVAL,
          "chunks: a length that does not fit the chunk count is refused");
    CHECK(engine_chunks_seal(k, base, 0, 2, plain, CHUNK, plain + 100, 1) == ENGINE_EOVERLAP &&
              engine_chunks_open(k, base, 0, 1, sealed, SEALED, sealed + 16, 1) == ENGINE_EOVERLAP,
          "chunks: overlapping output is refused");
    /* tampering: chunk 1 of 3 fails; chunk 0 is released, chunks 1 and 2 are zeroed */
    CHECK(engine_chunks_seal(k, base, 7, 3, plain, len, sealed, 2) == ENGINE_OK, "chunks: seal");
    sealed[SEALED + 5] ^= 1;
    memset(back, 0xee, 3 * CHUNK);
    CHECK(engine_chunks_open(k, base, 7, 3, sealed, len + 3 * 16, back, 2) == 1 &&
              memcmp(back, plain, CHUNK) == 0 && all_zero(back + CHUNK, len - CHUNK),
          "chunks: a flipped bit stops the run at that chunk and wipes the rest");
    sealed[SEALED + 5] ^= 1;
    CHECK(engine_chunks_open(k, base, 8, 3, sealed, len + 3 * 16, back, 2) == 0 &&
              all_zero(back, len),
          "chunks: a run opened at the wrong index fails at its first chunk");
    /* test case 15 as the final chunk, index 5, after one full chunk at index 4 */
    unhex("cafebabefacedbaddecaf88d", base);
    unhex(K16, key);
    unhex(tc15_pt, pt);
    memcpy(plain + CHUNK, pt, 64);
    unhex(tc15_sealed, expect);
    CHECK(engine_key_new(&x, backend, key) == ENGINE_OK &&
              engine_chunks_seal(x, base, 4, 2, plain, CHUNK + 64, sealed, 1) == ENGINE_OK &&
              memcmp(sealed + SEALED, expect, 80) == 0,
          "chunks: GCM test case 15 as a final chunk");
    CHECK(engine_chunks_open(x, base, 4, 2, sealed, SEALED + 80, back, 1) == 2 &&
              memcmp(back + CHUNK, pt, 64) == 0,
          "chunks: test case 15 opens");
    /* an empty final chunk is its tag alone: test case 13 (zero key, zero IV, nothing) */
    engine_key_free(x);
    memset(key, 0, 32);
    memset(base, 0, 12);
    unhex("530f8afbc74536b9a963b4f1c4cb738b", expect);
    CHECK(engine_key_new(&x, backend, key) == ENGINE_OK &&
              engine_chunks_seal(x, base, 0, 1, plain, 0, sealed, 1) == ENGINE_OK &&
              memcmp(sealed, expect, 16) == 0 &&
              engine_chunks_open(x, base, 0, 1, sealed, 16, back, 1) == 1,
          "chunks: an empty final chunk (test case 13)");
    engine_key_free(x);
    CHECK(engine_key_new_alg(&x, backend, ENGINE_ALG_XAES_GCM, key) == ENGINE_OK &&
              engine_chunks_seal(x, base, 0, 1, plain, 0, sealed, 1) == ENGINE_EINVAL,
          "chunks: an XAES-256-GCM key is refused");
    engine_key_free(x);
    engine_key_free(k);
out:
    free(plain);
    free(sealed);
    free(back);
}

int main(int argc, char **argv) {
    int backend = argc > 1 && strcmp(argv[1], "ipsec-mb") == 0 ? ENGINE_BACKEND_IPSECMB
                                                                 : ENGINE_BACKEND_OPENSSL;
    engine_key *k;
    uint8_t key[32] = {0};
    if (!engine_backend_available(backend)) {
        fprintf(stderr, "backend %s not available\n", engine_backend_name(backend));
        return 1;
    }
    for (size_t i = 0; i < sizeof(KATS) / sizeof(KATS[0]); i++) run_kat(backend, &KATS[i]);
    run_bulk(backend);
    run_derive(backend);
    run_xaes(backend);
    run_hmac();
    run_chunks(backend);
    /* invalid arguments are refused, not dereferenced */
    CHECK(engine_key_new(&k, 99, key) == ENGINE_EBACKEND, "unknown backend accepted");
    CHECK(engine_key_new(&k, backend, key) == ENGINE_OK, "key_new");
    CHECK(engine_seal(k, NULL, key, NULL, 0, key, 4, NULL, 0) == ENGINE_EINVAL, "short nonce");
    engine_key_free(k);
    printf("%s (%s %s, %s): %s\n", engine_backend_name(backend), engine_backend_version(backend),
           engine_backend_isa(backend), failures ? "FAILED" : "ok", failures ? "" : "all KATs pass");
    return failures ? 1 : 0;
}
