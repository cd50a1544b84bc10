/*
 * engine_aead: batch-oriented AES-256-GCM with two backends (Intel ipsec-mb, OpenSSL EVP).
 *
 * Conventions, after libsodium: short functions named engine_<object>_<verb>, an opaque key handle
 * whose set-up (key schedule, GHASH tables) is separate from per-message calls, and int results:
 * 0 on success, a negative ENGINE_E* code on failure. Callers validate arguments once; these
 * functions re-check only what would otherwise corrupt memory.
 *
 * A batch is Arrow's layout: record i of `in` is in[offsets[i] .. offsets[i+1]) and its output
 * goes to out + (offsets[i] - offsets[0]). `out` is either exactly `in + offsets[0]` (in place: every
 * record is written over itself) or shares no byte with any input or other output; anything else
 * (an output shifted against its input would overwrite records not yet read) is ENGINE_EOVERLAP.
 * Nonce i is nonces[i*nonce_len ..], tag i is tags[i*16 ..]. AAD is either one value for all
 * records (aad_offsets == NULL) or record i's aad[aad_offsets[i] .. aad_offsets[i+1]).
 *
 * Two algorithms share every entry point; the key handle says which. AES-256-GCM takes nonces of
 * 8 to 128 bytes. XAES-256-GCM (c2sp.org/XAES-256-GCM) takes nonces of exactly 24 bytes: each
 * message's AES-256-GCM key is derived from the handle's key and the first 12 nonce bytes (NIST
 * SP 800-108r1 counter KDF with CMAC-AES-256: two AES block encryptions), and the last 12 are
 * the GCM nonce, so random nonces are safe for practically unlimited messages under one key.
 */
#ifndef ENGINE_AEAD_H
#define ENGINE_AEAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ENGINE_WUR __attribute__((warn_unused_result))
#else
#define ENGINE_WUR
#endif

#define ENGINE_KEY_BYTES 32
#define ENGINE_TAG_BYTES 16
#define ENGINE_NONCE_MIN_BYTES 8
#define ENGINE_NONCE_MAX_BYTES 128
/* NIST SP 800-38D: plaintext of at most 2^39 - 256 bits. */
#define ENGINE_MESSAGE_MAX_BYTES 68719476704ULL

#define ENGINE_ALG_AES_GCM 0  /* AES-256-GCM */
#define ENGINE_ALG_XAES_GCM 1 /* XAES-256-GCM */
#define ENGINE_XAES_NONCE_BYTES 24

#define ENGINE_BACKEND_AUTO 0
#define ENGINE_BACKEND_IPSECMB 1
#define ENGINE_BACKEND_OPENSSL 2

#define ENGINE_OK 0
#define ENGINE_EAUTH (-1)    /* a tag did not verify; the output of that record is zeroed */
#define ENGINE_EINVAL (-2)   /* an argument the caller should have rejected */
#define ENGINE_ERANDOM (-3)  /* the CSPRNG failed */
#define ENGINE_EBACKEND (-4) /* the backend is not built in or the CPU cannot run it */
#define ENGINE_ENOMEM (-5)
#define ENGINE_ETHREAD (-6)  /* a worker thread could not be started */
#define ENGINE_EOVERLAP (-7) /* an output overlaps an input or another output (see batches below) */

typedef struct engine_key engine_key;

/* 1 when the backend is compiled in and this CPU can run it, else 0. */
int engine_backend_available(int backend);
/* The backend ENGINE_BACKEND_AUTO resolves to on this machine. */
int engine_backend_default(void);
/* Static strings: "ipsec-mb" / "openssl", the library version, the instruction set in use. */
const char *engine_backend_name(int backend);
const char *engine_backend_version(int backend);
const char *engine_backend_isa(int backend);

/* A key handle: key schedule and GHASH tables are computed here, once. The 32 key bytes are not
 * kept; the derived tables are wiped by engine_key_free. Returns 0 and sets *out, or ENGINE_E*. */
int engine_key_new(engine_key **out, int backend, const uint8_t *key) ENGINE_WUR;
/* A key handle for `algorithm` (ENGINE_ALG_*); engine_key_new is this with ENGINE_ALG_AES_GCM.
 * An XAES-256-GCM handle holds the AES-256 key schedule of the derivation and its CMAC subkey
 * K1, computed once here; per message, the derived key is expanded on the calling thread and
 * wiped once the thread's records are done. */
int engine_key_new_alg(engine_key **out, int backend, int algorithm,
                       const uint8_t *key) ENGINE_WUR;
void engine_key_free(engine_key *key);
int engine_key_backend(const engine_key *key);
/* ENGINE_ALG_* of the handle, or -1 for NULL. */
int engine_key_algorithm(const engine_key *key);

/* One message: out receives len bytes of ciphertext and tag 16 bytes. */
int engine_seal(const engine_key *key, uint8_t *out, uint8_t *tag, const uint8_t *in, uint64_t len,
                const uint8_t *nonce, size_t nonce_len, const uint8_t *aad, uint64_t aad_len) ENGINE_WUR;
/* Returns ENGINE_EAUTH (with out zeroed) when the tag does not verify. */
int engine_open(const engine_key *key, uint8_t *out, const uint8_t *in, uint64_t len,
                const uint8_t *tag, const uint8_t *nonce, size_t nonce_len, const uint8_t *aad,
                uint64_t aad_len) ENGINE_WUR;

/* Seals n records on up to `threads` threads (split by bytes). With fill_nonces != 0 the n nonces
 * are drawn first, in one CSPRNG call. */
int engine_seal_batch(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                      uint8_t *out, uint8_t *nonces, size_t nonce_len, int fill_nonces,
                      uint8_t *tags, const uint8_t *aad, const int64_t *aad_offsets,
                      uint64_t aad_len, int threads) ENGINE_WUR;
/* Opens n records; failed[i] is set to 1 for each record whose tag does not verify and 0 otherwise.
 * A failed record's output is zeroed, except in place, where its ciphertext is put back as it was
 * (so a retry with the right AAD or key can still open it). Returns the number of failed records
 * (>= 0) or ENGINE_E*. */
int64_t engine_open_batch(const engine_key *key, size_t n, const uint8_t *in,
                          const int64_t *offsets, uint8_t *out, const uint8_t *nonces,
                          size_t nonce_len, const uint8_t *tags, const uint8_t *aad,
                          const int64_t *aad_offsets, uint64_t aad_len, uint8_t *failed,
                          int threads) ENGINE_WUR;

/* Like engine_seal_batch, with record i read from ins[i] (offsets[i+1] - offsets[i] bytes; n
 * separate buffers, none sharing a byte with an output): sealing straight from the objects a
 * caller holds, one per record, without packing them first. */
int engine_seal_batch_each(const engine_key *key, size_t n, const uint8_t *const *ins,
                           const int64_t *offsets, uint8_t *out, uint8_t *nonces, size_t nonce_len,
                           int fill_nonces, uint8_t *tags, const uint8_t *aad,
                           const int64_t *aad_offsets, uint64_t aad_len, int threads) ENGINE_WUR;

/* Like engine_open_batch, with record i's plaintext written to outs[i] (n separate buffers, each
 * of that record's length, sharing no byte with any input or with each other): opening straight
 * into the objects a caller returns, one per record. */
int64_t engine_open_batch_each(const engine_key *key, size_t n, const uint8_t *in,
                               const int64_t *offsets, uint8_t *const *outs,
                               const uint8_t *nonces, size_t nonce_len, const uint8_t *tags,
                               const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                               uint8_t *failed, int threads) ENGINE_WUR;

/* Tokens: record i becomes header || nonce || ciphertext || tag at out + out_starts[i] (spaced by
 * the caller: header_len + nonce_len + len + 16 each). Nonces are drawn in one CSPRNG call. The
 * AAD is (header_is_aad ? header : nothing) || the caller's AAD (one value, or per record). */
int engine_seal_tokens(const engine_key *key, size_t n, const uint8_t *in, const int64_t *offsets,
                       const uint8_t *header, size_t header_len, int header_is_aad,
                       size_t nonce_len, uint8_t *out, const int64_t *out_starts,
                       const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                       int threads) ENGINE_WUR;
/* Opens tokens laid out as above; record i's plaintext goes to out + out_starts[i], which must not
 * overlap the tokens or the AAD (ENGINE_EOVERLAP). Its AAD is (header_is_aad ? the token's own
 * first header_len bytes : nothing) || the caller's AAD. Returns the number of failed records
 * (failed[i] = 1, output zeroed) or ENGINE_E*. */
int64_t engine_open_tokens(const engine_key *key, size_t n, const uint8_t *in,
                           const int64_t *offsets, size_t header_len, int header_is_aad,
                           size_t nonce_len, uint8_t *out, const int64_t *out_starts,
                           const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                           uint8_t *failed, int threads) ENGINE_WUR;

/* Batches with a key of their own per record: record i under keys[i*32 ..], a handle of
 * `algorithm` made and freed for each record on the thread that seals or opens it. Layouts and
 * results as engine_seal_batch (with the caller's nonces) and engine_open_batch. For data kept
 * under one key per record and for tests over many keys (the XAES-256-GCM accumulated test: a
 * million keys in one call); `keys` must not overlap an output. */
int engine_seal_batch_keys(int backend, int algorithm, size_t n, const uint8_t *keys,
                           const uint8_t *in, const int64_t *offsets, uint8_t *out,
                           const uint8_t *nonces, size_t nonce_len, uint8_t *tags,
                           const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                           int threads) ENGINE_WUR;
int64_t engine_open_batch_keys(int backend, int algorithm, size_t n, const uint8_t *keys,
                               const uint8_t *in, const int64_t *offsets, uint8_t *out,
                               const uint8_t *nonces, size_t nonce_len, const uint8_t *tags,
                               const uint8_t *aad, const int64_t *aad_offsets, uint64_t aad_len,
                               uint8_t *failed, int threads) ENGINE_WUR;

/* C2SP chunked encryption (c2sp.org/chunked-encryption): a message's plaintext is cut into
 * chunks of ENGINE_CHUNK_BYTES, the last one shorter (possibly empty), and chunk i is sealed as an
 * AES-256-GCM record with empty AAD under the nonce base_nonce XOR i (i big-endian across the 12
 * bytes; i < ENGINE_CHUNK_MAX). The message layout has each chunk's body followed by its tag.
 * These calls seal and open a run of n consecutive chunks, i = first .. first + n - 1, straight
 * between the plaintext (chunk j at in/out + j * ENGINE_CHUNK_BYTES) and the message layout
 * (chunk j at in/out + j * ENGINE_CHUNK_SEALED_BYTES), deriving the nonces here. Every chunk of a
 * run but the last is full; the last holds what `len` leaves, so a run inside a message ends
 * with a full chunk and a message's final run with its short final chunk. The key must be an
 * AES-256-GCM handle (ENGINE_EINVAL otherwise); the output must share no byte with the input or
 * the base nonce (ENGINE_EOVERLAP). n = 0 is allowed with len = 0 and does nothing. */
#define ENGINE_CHUNK_BYTES 16384
#define ENGINE_CHUNK_SEALED_BYTES (ENGINE_CHUNK_BYTES + ENGINE_TAG_BYTES)
#define ENGINE_CHUNK_NONCE_BYTES 12
#define ENGINE_CHUNK_MAX (1ULL << 38)
/* Seals `len` bytes of plaintext as n chunks ((n - 1) * ENGINE_CHUNK_BYTES <= len <=
 * n * ENGINE_CHUNK_BYTES); out receives len + 16 * n bytes. */
int engine_chunks_seal(const engine_key *key, const uint8_t *base_nonce, uint64_t first, size_t n,
                       const uint8_t *in, uint64_t len, uint8_t *out, int threads) ENGINE_WUR;
/* Opens `len` bytes of n sealed chunks (the last one 16 to ENGINE_CHUNK_SEALED_BYTES bytes); out
 * receives len - 16 * n bytes of plaintext. Returns how many leading chunks authenticated (n: all)
 * or ENGINE_E*: out holds the plaintext of exactly those chunks, and zeros from the first one that
 * failed to the end (chunks after it are not released even where they authenticate). */
int64_t engine_chunks_open(const engine_key *key, const uint8_t *base_nonce, uint64_t first,
                           size_t n, const uint8_t *in, uint64_t len, uint8_t *out,
                           int threads) ENGINE_WUR;

/* base64url without padding (RFC 4648 section 5), record by record. */
#define ENGINE_B64_OK 0
#define ENGINE_B64_PREFIX 1       /* the record does not start with the prefix */
#define ENGINE_B64_LENGTH 2       /* impossible length, or not the size out_offsets allows */
#define ENGINE_B64_CHARACTER 3    /* a byte outside the base64url alphabet */
#define ENGINE_B64_NONCANONICAL 4 /* non-zero trailing bits */
/* out + out_offsets[i] receives prefix || base64url(record i). */
int engine_b64url_encode_batch(size_t n, const uint8_t *in, const int64_t *offsets,
                               const uint8_t *prefix, size_t prefix_len, uint8_t *out,
                               const int64_t *out_offsets, int threads) ENGINE_WUR;
/* Checks the prefix and decodes the rest of record i into out + out_offsets[i]; status[i] gets
 * ENGINE_B64_*; bad records decode to zeros. Returns the number of bad records or ENGINE_E*. */
int64_t engine_b64url_decode_batch(size_t n, const uint8_t *in, const int64_t *offsets,
                                   const uint8_t *prefix, size_t prefix_len, uint8_t *out,
                                   const int64_t *out_offsets, uint8_t *status,
                                   int threads) ENGINE_WUR;
/* For each i: copies lengths[i] bytes from src + src_starts[i] (src_starts NULL: from src) to
 * dst + dst_starts[i]. */
int engine_gather(size_t n, const uint8_t *src, const int64_t *src_starts, const int64_t *lengths,
                  uint8_t *dst, const int64_t *dst_starts, int threads) ENGINE_WUR;

/* HMAC-SHA-256 of each record under one key (1 to 64 bytes), truncated to its first `bits`
 * bits (1 to 256): out + i * ceil(bits / 8) receives them, the unused low bits of the last byte
 * zeroed. For blind indexes; runs on ipsec-mb's multi-buffer HMAC where it is built in and the
 * batch is large, else on OpenSSL, whatever the backend of the AES-GCM keys. */
int engine_hmac_sha256_batch(const uint8_t *key, size_t key_len, size_t n, const uint8_t *in,
                             const int64_t *offsets, uint8_t *out, size_t bits,
                             int threads) ENGINE_WUR;

/* Normalises index values (ASCII only; other bytes pass unchanged), per record: TRIM drops
 * whitespace (space, \t \n \v \f \r) at both ends, DIGITS keeps only 0-9, LOWER lower-cases
 * A-Z; bad[i] = 1 when EMAIL is asked and the result has not exactly one '@' with bytes on both
 * sides, or has whitespace, or is over 254 bytes, or when DIGITS is asked and none is left.
 * Record i goes to out + (offsets[i] - offsets[0]) (room for the input is enough), its new
 * length to lengths[i]. `out` may be the input's own memory. */
#define ENGINE_NORM_TRIM 1u
#define ENGINE_NORM_LOWER 2u
#define ENGINE_NORM_EMAIL 4u
#define ENGINE_NORM_DIGITS 8u
#define ENGINE_NORM_ALL 15u
int engine_normalize_batch(unsigned flags, size_t n, const uint8_t *in, const int64_t *offsets,
                           uint8_t *out, int64_t *lengths, uint8_t *bad, int threads) ENGINE_WUR;

/* Fills buf with len bytes from OpenSSL's CSPRNG. Safe across fork(), also while other threads
 * draw: a child never hangs on a lock held at fork time and never repeats its parent's bytes. */
int engine_random(uint8_t *buf, size_t len) ENGINE_WUR;

/* Key derivation from a key handle, so that a derived key never leaves native memory either:
 * okm = HKDF-Expand(SHA-512, prk = the 32 bytes of `key`, info, 32 + extra_len) (RFC 5869; no
 * Extract step, so `key` must be uniformly random). *out receives a new AES-256-GCM handle
 * (whatever the algorithm of `key`) on the same backend keyed with okm[0..32); extra receives okm[32..32 + extra_len), meant for values that
 * are not secret (nonces, key commitments). okm is wiped. */
#define ENGINE_DERIVE_EXTRA_MAX 224
int engine_key_derive(engine_key **out, const engine_key *key, const uint8_t *info,
                      size_t info_len, uint8_t *extra, size_t extra_len) ENGINE_WUR;

#ifdef __cplusplus
}
#endif
#endif
