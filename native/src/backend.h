/* Internal: what each backend provides to the dispatcher in engine_aead.c. */
#ifndef ENGINE_BACKEND_H
#define ENGINE_BACKEND_H

#include "engine_aead.h"

/* Per-thread scratch state. A backend keeps its state in `inline_state` when it fits (ipsec-mb:
 * the GCM context, and for XAES-256-GCM the expanded message key), so a single-message call
 * allocates nothing. */
typedef struct engine_worker {
    void *state;
    _Alignas(64) unsigned char inline_state[1536];
} engine_worker;

/* The most text, and the most AAD, of a message that xaes_pair takes. */
#define ENGINE_XAES_PAIR_MAX_BYTES 64

/* One message of a batch: where its text, output, nonce, tag and AAD are. */
typedef struct engine_message {
    const uint8_t *in;
    uint8_t *out;
    uint64_t len;
    const uint8_t *nonce;
    size_t nonce_len;
    uint8_t *tag;
    const uint8_t *aad;
    uint64_t aad_len;
} engine_message;

typedef struct engine_backend_ops {
    int (*available)(void);
    const char *(*version)(void);
    const char *(*isa)(void);
    /* By key->algorithm: AES-256-GCM's key schedule and GHASH tables, or for XAES-256-GCM the
     * AES-256 key schedule of the derivation. */
    int (*key_init)(engine_key *key, const uint8_t *raw);
    void (*key_wipe)(engine_key *key);
    int (*worker_init)(const engine_key *key, engine_worker *w);
    void (*worker_free)(engine_worker *w);
    /* XAES-256-GCM: out = AES-256_K(in[0..16)) || AES-256_K(in[16..32)) with K the handle's key. */
    int (*encrypt_blocks2)(const engine_key *key, engine_worker *w, uint8_t *out, const uint8_t *in);
    /* XAES-256-GCM: `raw` becomes the AES-256-GCM key of the worker's next seal and open, for a
     * message of `len` bytes (a backend may choose its code by the length). */
    int (*set_message_key)(engine_worker *w, const uint8_t *raw, uint64_t len);
    int (*seal)(const engine_key *key, engine_worker *w, uint8_t *out, uint8_t *tag, const uint8_t *in,
                uint64_t len, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                uint64_t aad_len);
    /* Decrypts into out and returns ENGINE_OK or ENGINE_EAUTH; the dispatcher zeroes on EAUTH. */
    int (*open)(const engine_key *key, engine_worker *w, uint8_t *out, const uint8_t *in, uint64_t len,
                const uint8_t *tag, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                uint64_t aad_len);
    /* XAES-256-GCM, optional (NULL): seals or opens two messages at once (24-byte nonces), each
     * with text and AAD of at most ENGINE_XAES_PAIR_MAX_BYTES. Sealing writes m[j].tag; opening
     * writes the plaintext, and the tag it computes into computed[j] for the caller to compare. */
    void (*xaes_pair)(const engine_key *key, int seal, const engine_message m[2],
                      uint8_t computed[2][ENGINE_TAG_BYTES]);
} engine_backend_ops;

struct engine_key {
    const engine_backend_ops *ops;
    int backend;
    int algorithm; /* ENGINE_ALG_* */
    void *impl;
    /* The key itself, the PRK of engine_key_derive. Keeping it adds no exposure: the expanded
     * AES key schedule in impl begins with these same 32 bytes. Wiped by engine_key_free. */
    uint8_t raw[ENGINE_KEY_BYTES];
    /* XAES-256-GCM: the CMAC subkey K1 = dbl(AES-256_K(0^128)) of the derivation. */
    uint8_t k1[16];
};

extern const engine_backend_ops engine_openssl_ops;
#ifdef ENGINE_HAVE_IPSECMB
extern const engine_backend_ops engine_ipsecmb_ops;
/* AES-256-GCM with a 12-byte nonce under a key used for this one message (see gcm_single_use.c):
 * encrypts (encrypting = 1) or decrypts in to out and writes the tag it computes. Needs AES-NI,
 * PCLMULQDQ and SSE4.1, which the ipsec-mb backend requires. */
void engine_gcm_single_use(int encrypting, const uint8_t key[32], uint8_t *out, const uint8_t *in,
                           uint64_t len, const uint8_t nonce[12], const uint8_t *aad,
                           uint64_t aad_len, uint8_t tag[16]);
/* XAES-256-GCM for two messages at once (their instructions interleave), each with text and AAD
 * of at most ENGINE_XAES_PAIR_MAX_BYTES and a 24-byte nonce: the message keys are derived with
 * `round_keys` (the AES-256 key schedule of the XAES key) and `k1`, then as
 * engine_gcm_single_use. The tags go to m[j].tag when encrypting, else to computed[j]. */
void engine_xaes_short_pair(const uint8_t round_keys[240], const uint8_t k1[16], int encrypting,
                            const engine_message m[2], uint8_t computed[2][16]);
/* HMAC-SHA-256 of the non-empty records of [begin, end) (see hmac.c), through ipsec-mb's job API
 * on this thread. */
int engine_ipsecmb_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *in,
                               const int64_t *offsets, size_t begin, size_t end, uint8_t *out,
                               size_t out_len, uint8_t last_mask);
#endif

/* Runs fn on contiguous ranges of records [0, n) on up to `threads` threads: the records are cut
 * into chunks of about the same weight (bytes, by offsets, or NULL: by count, plus a per-record
 * cost) that the threads take in turn. fn returns a count (summed) or a negative ENGINE_E* code
 * (returned; the other threads stop taking chunks). */
typedef int64_t (*engine_range_fn)(void *ctx, size_t begin, size_t end);
int64_t engine_parallel(size_t n, const int64_t *offsets, int threads, engine_range_fn fn, void *ctx);
/* engine_parallel for n records of record_bytes each. */
int64_t engine_parallel_uniform(size_t n, uint64_t record_bytes, int threads, engine_range_fn fn,
                                void *ctx);

/* Constant-time comparison of n bytes: 0 when equal. */
int engine_ct_differ(const uint8_t *a, const uint8_t *b, size_t n);
void engine_wipe(void *p, size_t n);

#endif
