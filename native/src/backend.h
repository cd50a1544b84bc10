/* Internal: what each backend provides to the dispatcher in engine_aead.c. */
#ifndef ENGINE_BACKEND_H
#define ENGINE_BACKEND_H

#include "engine_aead.h"

/* Per-thread scratch state. A backend whose state is small keeps it in `inline_state`, so a
 * single-message call allocates nothing. */
typedef struct engine_worker {
    void *state;
    _Alignas(64) unsigned char inline_state[256];
} engine_worker;

typedef struct engine_backend_ops {
    int (*available)(void);
    const char *(*version)(void);
    const char *(*isa)(void);
    int (*key_init)(engine_key *key, const uint8_t *raw);
    void (*key_wipe)(engine_key *key);
    int (*worker_init)(const engine_key *key, engine_worker *w);
    void (*worker_free)(engine_worker *w);
    int (*seal)(const engine_key *key, engine_worker *w, uint8_t *out, uint8_t *tag, const uint8_t *in,
                uint64_t len, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                uint64_t aad_len);
    /* Decrypts into out and returns ENGINE_OK or ENGINE_EAUTH; the dispatcher zeroes on EAUTH. */
    int (*open)(const engine_key *key, engine_worker *w, uint8_t *out, const uint8_t *in, uint64_t len,
                const uint8_t *tag, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                uint64_t aad_len);
} engine_backend_ops;

struct engine_key {
    const engine_backend_ops *ops;
    int backend;
    void *impl;
    /* The key itself, the PRK of engine_key_derive. Keeping it adds no exposure: the expanded
     * AES key schedule in impl begins with these same 32 bytes. Wiped by engine_key_free. */
    uint8_t raw[ENGINE_KEY_BYTES];
};

extern const engine_backend_ops engine_openssl_ops;
#ifdef ENGINE_HAVE_IPSECMB
extern const engine_backend_ops engine_ipsecmb_ops;
#endif

/* Runs fn on contiguous ranges of records [0, n) on up to `threads` threads: the records are cut
 * into chunks of about the same weight (bytes, by offsets, or NULL: by count, plus a per-record
 * cost) that the threads take in turn. fn returns a count (summed) or a negative ENGINE_E* code
 * (returned; the other threads stop taking chunks). */
typedef int64_t (*engine_range_fn)(void *ctx, size_t begin, size_t end);
int64_t engine_parallel(size_t n, const int64_t *offsets, int threads, engine_range_fn fn, void *ctx);

/* Constant-time comparison of n bytes: 0 when equal. */
int engine_ct_differ(const uint8_t *a, const uint8_t *b, size_t n);
void engine_wipe(void *p, size_t n);

#endif
