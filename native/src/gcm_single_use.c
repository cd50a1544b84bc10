/* AES-256-GCM for a key that seals or opens one message (XAES-256-GCM's message keys), with the
 * AES-NI and PCLMULQDQ instructions.
 *
 * A library's GCM set-up expands the key and precomputes a table of powers of the hash key H
 * (ipsec-mb: 8 to 48 powers, 87-130 ns on a Zen 4 core), which pays off over many messages under one key. A
 * key used once repays none of that on a short message: this code expands the key while it
 * encrypts H, the tag mask and the first four counter blocks, computes only H^2..H^5, and hashes
 * up to five blocks per reduction. Only the 12-byte nonce form is implemented (XAES always hands
 * 12 bytes on). Every instruction used runs in time independent of the data; the caller compares
 * tags in constant time. `out` may equal `in` (each block is loaded before it is stored).
 *
 * A batch of short XAES records goes through engine_xaes_short_pair: two records at a time, their
 * key derivations and then every step of GCM side by side. One message's steps mostly wait on
 * each other (the key expansion, then H, then its powers); two independent messages keep the
 * core busy, and no message key leaves the registers and the wiped scratch of that one call.
 *
 * GHASH is computed as POLYVAL (RFC 8452, appendix A): with blocks and H byte-reversed and H
 * multiplied by x, GHASH(H, X) = ByteReverse(POLYVAL(mulX(ByteReverse(H)), ByteReverse(X))).
 * POLYVAL's product a*b*x^-128 needs no bit shift and reduces with two carry-less multiplications
 * by the constant 0xc2 << 56 (Gueron, Langley and Lindell's AES-GCM-SIV code); products summed
 * before one reduction give the same result as reducing each, since the reduction is linear. */
#include <string.h>

#include <immintrin.h>

#include "backend.h"

#define TARGET __attribute__((target("aes,pclmul,ssse3,sse4.1"), always_inline)) static inline

TARGET __m128i byte_reverse(__m128i x) {
    return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* ---- AES-256 (FIPS 197) ---- */

/* The four 32-bit words of prev, each xored with all before it, xored with assist's word w. */
#define EXPAND_STEP(prev, assist, w)                                                         \
    _mm_xor_si128(_mm_xor_si128(prev, _mm_slli_si128(prev, 4)),                              \
                  _mm_xor_si128(_mm_slli_si128(_mm_xor_si128(prev, _mm_slli_si128(prev, 4)), 8), \
                                _mm_shuffle_epi32(assist, w)))

#define EXPAND_PAIR(i, rcon)                                                                \
    rk[i] = EXPAND_STEP(rk[i - 2], _mm_aeskeygenassist_si128(rk[i - 1], rcon), 0xff);       \
    if (i < 14) rk[i + 1] = EXPAND_STEP(rk[i - 1], _mm_aeskeygenassist_si128(rk[i], 0), 0xaa)

/* rk[2..15) from the key in rk[0..2). */
TARGET void expand_schedule(__m128i rk[15]) {
    EXPAND_PAIR(2, 0x01);
    EXPAND_PAIR(4, 0x02);
    EXPAND_PAIR(6, 0x04);
    EXPAND_PAIR(8, 0x08);
    EXPAND_PAIR(10, 0x10);
    EXPAND_PAIR(12, 0x20);
    EXPAND_PAIR(14, 0x40);
}

TARGET void expand_key(__m128i rk[15], const uint8_t key[32]) {
    rk[0] = _mm_loadu_si128((const __m128i *)key);
    rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
    expand_schedule(rk);
}

/* Encrypts n blocks in place; n is a constant at every call: the rounds unroll into registers. */
TARGET void encrypt_blocks(const __m128i rk[15], __m128i *b, const int n) {
    int i, r;
#pragma GCC unroll 8
    for (i = 0; i < n; i++) b[i] = _mm_xor_si128(b[i], rk[0]);
#pragma GCC unroll 16
    for (r = 1; r < 14; r++)
#pragma GCC unroll 8
        for (i = 0; i < n; i++) b[i] = _mm_aesenc_si128(b[i], rk[r]);
#pragma GCC unroll 8
    for (i = 0; i < n; i++) b[i] = _mm_aesenclast_si128(b[i], rk[14]);
}

/* ---- POLYVAL ---- */

TARGET __m128i polyval_constant(void) {
    return _mm_set_epi64x((long long)0xc200000000000000ULL, 1);
}

/* The 256-bit carry-less product a*b, added into (lo, hi). */
TARGET void clmul_add(__m128i a, __m128i b, __m128i *lo, __m128i *hi) {
    __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10), _mm_clmulepi64_si128(a, b, 0x01));
    __m128i low = _mm_clmulepi64_si128(a, b, 0x00), high = _mm_clmulepi64_si128(a, b, 0x11);
    *lo = _mm_xor_si128(*lo, _mm_xor_si128(low, _mm_slli_si128(mid, 8)));
    *hi = _mm_xor_si128(*hi, _mm_xor_si128(high, _mm_srli_si128(mid, 8)));
}

/* (lo, hi) * x^-128 modulo x^128 + x^127 + x^126 + x^121 + 1. */
TARGET __m128i reduce(__m128i lo, __m128i hi) {
    const __m128i poly = polyval_constant();
    lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), _mm_clmulepi64_si128(lo, poly, 0x10));
    lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), _mm_clmulepi64_si128(lo, poly, 0x10));
    return _mm_xor_si128(lo, hi);
}

TARGET __m128i dot(__m128i a, __m128i b) {
    __m128i lo = _mm_setzero_si128(), hi = _mm_setzero_si128();
    clmul_add(a, b, &lo, &hi);
    return reduce(lo, hi);
}

/* v * x: a 128-bit shift left by one, reduced when bit 127 falls out. */
TARGET __m128i multiply_by_x(__m128i v) {
    __m128i shifted = _mm_or_si128(_mm_slli_epi64(v, 1), _mm_slli_si128(_mm_srli_epi64(v, 63), 8));
    __m128i carry = _mm_shuffle_epi32(_mm_srai_epi32(v, 31), 0xff);
    return _mm_xor_si128(shifted, _mm_and_si128(carry, polyval_constant()));
}

/* s with the k blocks p[0..k) (byte-reversed, 1 <= k <= 5) hashed in, one reduction:
 * (s ^ p0) h^k ^ p1 h^(k-1) ^ ... ^ p(k-1) h, where h[j] holds h^(j+1). */
TARGET __m128i fold(__m128i s, const __m128i *p, const int k, const __m128i h[5]) {
    __m128i lo = _mm_setzero_si128(), hi = _mm_setzero_si128();
    int i;
    clmul_add(_mm_xor_si128(s, p[0]), h[k - 1], &lo, &hi);
#pragma GCC unroll 5
    for (i = 1; i < k; i++) clmul_add(p[i], h[k - 1 - i], &lo, &hi);
    return reduce(lo, hi);
}

/* fold for a k known only at run time. */
TARGET __m128i fold_any(__m128i s, const __m128i *p, int k, const __m128i h[5]) {
    switch (k) {
    case 1: return fold(s, p, 1, h);
    case 2: return fold(s, p, 2, h);
    case 3: return fold(s, p, 3, h);
    case 4: return fold(s, p, 4, h);
    default: return fold(s, p, 5, h);
    }
}

/* memcpy of n <= 64 bytes without a library call, in overlapping moves; dst and src are apart. */
TARGET void copy_upto64(uint8_t *dst, const uint8_t *src, size_t n) {
    if (n >= 16) {
        const __m128i last = _mm_loadu_si128((const __m128i *)(src + n - 16));
        size_t i;
        for (i = 0; i + 16 < n; i += 16)
            _mm_storeu_si128((__m128i *)(dst + i), _mm_loadu_si128((const __m128i *)(src + i)));
        _mm_storeu_si128((__m128i *)(dst + n - 16), last);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, src, 8), memcpy(&b, src + n - 8, 8);
        memcpy(dst, &a, 8), memcpy(dst + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, src, 4), memcpy(&b, src + n - 4, 4);
        memcpy(dst, &a, 4), memcpy(dst + n - 4, &b, 4);
    } else if (n > 0) {
        dst[0] = src[0], dst[n / 2] = src[n / 2], dst[n - 1] = src[n - 1];
    }
}

/* The len (<= 64) bytes at src copied into the 64 bytes at dst, zero-padded. */
TARGET void copy_padded64(uint8_t *dst, const uint8_t *src, size_t len) {
    int i;
#pragma GCC unroll 4
    for (i = 0; i < 4; i++) _mm_store_si128((__m128i *)(dst + 16 * i), _mm_setzero_si128());
    copy_upto64(dst, src, len);
}

/* The len (<= 64) bytes at src as byte-reversed blocks, zero-padded; returns how many blocks
 * hold them. */
TARGET int load_padded(__m128i p[4], const uint8_t *src, size_t len) {
    _Alignas(16) uint8_t bytes[64];
    int i;
    copy_padded64(bytes, src, len);
#pragma GCC unroll 4
    for (i = 0; i < 4; i++) p[i] = byte_reverse(_mm_load_si128((const __m128i *)(bytes + 16 * i)));
    return (int)((len + 15) / 16);
}

/* 64 bytes of 0xff, then 64 of 0: from g_text_mask + 64 - len, the mask of a len-byte text. */
static const uint8_t g_text_mask[128] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/* ---- GCM ---- */

/* J0 = nonce || 00000001, byte-reversed: its 32-bit counter is the low lane. */
TARGET __m128i first_counter(const uint8_t nonce[12]) {
    _Alignas(16) uint8_t block[16];
    memcpy(block, nonce, 12);
    block[12] = 0, block[13] = 0, block[14] = 0, block[15] = 1;
    return byte_reverse(_mm_load_si128((const __m128i *)block));
}

/* The four counter blocks after `counter` (byte-reversed: its 32-bit counter is the low lane). */
TARGET void counter_blocks(__m128i blocks[4], __m128i counter) {
    int i;
#pragma GCC unroll 4
    for (i = 0; i < 4; i++)
        blocks[i] = byte_reverse(_mm_add_epi32(counter, _mm_set_epi32(0, 0, 0, i + 1)));
}

/* POLYVAL's H^1..H^5 from GCM's hash key, the encryption of the zero block. */
TARGET void hash_key_powers(__m128i h[5], __m128i hash_key) {
    h[0] = multiply_by_x(byte_reverse(hash_key));
    h[1] = dot(h[0], h[0]);
    h[2] = dot(h[1], h[0]);
    h[3] = dot(h[1], h[1]);
    h[4] = dot(h[3], h[0]);
}

/* A text's last len (<= 64) bytes, xored with the keystream ks: copied into the 64 bytes at
 * `bytes` (for the caller to copy out, len bytes of them), and its ciphertext, zero-padded, into
 * p as byte-reversed blocks to hash. Returns how many blocks. */
TARGET int crypt_last(int encrypting, const __m128i ks[4], uint8_t bytes[64], const uint8_t *in,
                      size_t len, __m128i p[4]) {
    int i;
    copy_padded64(bytes, in, len);
#pragma GCC unroll 4
    for (i = 0; i < 4; i++) {
        __m128i x = _mm_load_si128((const __m128i *)(bytes + 16 * i));
        __m128i y = _mm_xor_si128(x, ks[i]);
        __m128i mask = _mm_loadu_si128((const __m128i *)(g_text_mask + 64 - len + 16 * i));
        _mm_store_si128((__m128i *)(bytes + 16 * i), y);
        p[i] = byte_reverse(encrypting ? _mm_and_si128(y, mask) : x);
    }
    return (int)((len + 15) / 16);
}

/* [aad bits]64 || [text bits]64 big-endian, byte-reversed: the text's is the low lane. */
TARGET __m128i lengths_block(uint64_t aad_len, uint64_t len) {
    return _mm_set_epi64x((long long)(aad_len * 8), (long long)(len * 8));
}

__attribute__((target("aes,pclmul,ssse3,sse4.1"))) void
engine_gcm_single_use(int encrypting, const uint8_t key[32], uint8_t *out, const uint8_t *in,
                      uint64_t len, const uint8_t nonce[12], const uint8_t *aad, uint64_t aad_len,
                      uint8_t tag[16]) {
    struct { /* key material and plaintext, wiped at the end */
        __m128i rk[15];
        __m128i b[6]; /* H, the tag mask E(J0), then four keystream blocks */
        __m128i h[5]; /* POLYVAL's H^1..H^5 */
        __m128i p[5]; /* blocks to hash */
        _Alignas(16) uint8_t last[64];
    } s;
    __m128i *rk = s.rk, *b = s.b, *ks = s.b + 2, *h = s.h, *p = s.p, counter, acc;
    const __m128i lengths = lengths_block(aad_len, len);
    int i, k;

    counter = first_counter(nonce);
    expand_key(rk, key);
    b[0] = _mm_setzero_si128();
    b[1] = byte_reverse(counter);
    counter_blocks(ks, counter);
    encrypt_blocks(rk, b, 6);
    hash_key_powers(h, b[0]);
    acc = _mm_setzero_si128();

    for (; aad_len >= 64; aad += 64, aad_len -= 64) {
#pragma GCC unroll 4
        for (i = 0; i < 4; i++)
            p[i] = byte_reverse(_mm_loadu_si128((const __m128i *)(aad + 16 * i)));
        acc = fold(acc, p, 4, h);
    }
    if (aad_len > 0) acc = fold_any(acc, p, load_padded(p, aad, (size_t)aad_len), h);

    /* Whole groups of four blocks; while the text goes on, the next four keystream blocks. */
    while (len >= 64) {
#pragma GCC unroll 4
        for (i = 0; i < 4; i++) {
            __m128i x = _mm_loadu_si128((const __m128i *)(in + 16 * i));
            __m128i y = _mm_xor_si128(x, ks[i]);
            _mm_storeu_si128((__m128i *)(out + 16 * i), y);
            p[i] = byte_reverse(encrypting ? y : x);
        }
        acc = fold(acc, p, 4, h);
        in += 64, out += 64, len -= 64;
        if (len > 0) {
            counter = _mm_add_epi32(counter, _mm_set_epi32(0, 0, 0, 4));
            counter_blocks(ks, counter);
            encrypt_blocks(rk, ks, 4);
        }
    }

    /* The last 0..63 bytes and the lengths block in one fold. */
    k = crypt_last(encrypting, ks, s.last, in, (size_t)len, p);
    copy_upto64(out, s.last, (size_t)len);
    p[k] = lengths;
    acc = fold_any(acc, p, k + 1, h);
    _mm_storeu_si128((__m128i *)tag, _mm_xor_si128(byte_reverse(acc), b[1]));

    engine_wipe(&s, sizeof(s));
}

/* Both messages' rounds in one loop, so their independent instructions interleave. */
TARGET void encrypt_blocks_pair(const __m128i rk0[15], __m128i b0[6], const __m128i rk1[15],
                                __m128i b1[6]) {
    int i, r;
#pragma GCC unroll 6
    for (i = 0; i < 6; i++)
        b0[i] = _mm_xor_si128(b0[i], rk0[0]), b1[i] = _mm_xor_si128(b1[i], rk1[0]);
#pragma GCC unroll 16
    for (r = 1; r < 14; r++)
#pragma GCC unroll 6
        for (i = 0; i < 6; i++)
            b0[i] = _mm_aesenc_si128(b0[i], rk0[r]), b1[i] = _mm_aesenc_si128(b1[i], rk1[r]);
#pragma GCC unroll 6
    for (i = 0; i < 6; i++)
        b0[i] = _mm_aesenclast_si128(b0[i], rk0[14]), b1[i] = _mm_aesenclast_si128(b1[i], rk1[14]);
}

/* XAES-256-GCM for two messages of at most 64 bytes with at most 64 bytes of AAD, one step at a
 * time for both: each step's two halves are independent, so one message's multiplications and
 * AES rounds fill the other's waiting time. */
__attribute__((target("aes,pclmul,ssse3,sse4.1"))) void
engine_xaes_short_pair(const uint8_t round_keys[240], const uint8_t k1[16], int encrypting,
                       const engine_message m[2], uint8_t computed[2][16]) {
    struct { /* key material and plaintext, wiped at the end */
        __m128i message_keys[4]; /* M1 ^ K1, M2 ^ K1 of each message, then its key */
        __m128i rk[2][15];
        __m128i b[2][6]; /* H, the tag mask E(J0), then four keystream blocks */
        __m128i h[2][5];
        __m128i text[2][5]; /* the text's blocks, then its lengths block */
        _Alignas(16) uint8_t bytes[2][64];
    } s;
    const __m128i k1v = _mm_loadu_si128((const __m128i *)k1);
    __m128i aad[2][5], acc[2];
    _Alignas(16) uint8_t block[16];
    int j, kt[2], ka[2];

    /* The message keys AES-256_K(Mj ^ K1), Mj = 00 0j 'X' 00 || nonce[0..12)
     * (c2sp.org/XAES-256-GCM), four blocks in one pass. GCM's nonce is nonce[12..24). */
#pragma GCC unroll 2
    for (j = 0; j < 2; j++) {
        block[0] = 0, block[1] = 1, block[2] = 'X', block[3] = 0;
        memcpy(block + 4, m[j].nonce, 12);
        s.message_keys[2 * j] = _mm_xor_si128(_mm_load_si128((const __m128i *)block), k1v);
        block[1] = 2;
        s.message_keys[2 * j + 1] = _mm_xor_si128(_mm_load_si128((const __m128i *)block), k1v);
    }
    encrypt_blocks((const __m128i *)round_keys, s.message_keys, 4);

#pragma GCC unroll 2
    for (j = 0; j < 2; j++) {
        const __m128i counter = first_counter(m[j].nonce + 12);
        s.rk[j][0] = s.message_keys[2 * j];
        s.rk[j][1] = s.message_keys[2 * j + 1];
        expand_schedule(s.rk[j]);
        s.b[j][0] = _mm_setzero_si128();
        s.b[j][1] = byte_reverse(counter);
        counter_blocks(s.b[j] + 2, counter);
    }
    encrypt_blocks_pair(s.rk[0], s.b[0], s.rk[1], s.b[1]);
#pragma GCC unroll 2
    for (j = 0; j < 2; j++) hash_key_powers(s.h[j], s.b[j][0]);

    /* All of both inputs are read before any output is written. */
#pragma GCC unroll 2
    for (j = 0; j < 2; j++) {
        ka[j] = load_padded(aad[j], m[j].aad, (size_t)m[j].aad_len); /* at most 4 */
        aad[j][4] = _mm_setzero_si128();                             /* unused */
        kt[j] = crypt_last(encrypting, s.b[j] + 2, s.bytes[j], m[j].in, (size_t)m[j].len,
                           s.text[j]);
        s.text[j][kt[j]] = lengths_block(m[j].aad_len, m[j].len);
    }
#pragma GCC unroll 2
    for (j = 0; j < 2; j++) copy_upto64(m[j].out, s.bytes[j], (size_t)m[j].len);
#pragma GCC unroll 2
    for (j = 0; j < 2; j++) {
        acc[j] = _mm_setzero_si128();
        if (ka[j] > 0) acc[j] = fold_any(acc[j], aad[j], ka[j], s.h[j]);
    }
#pragma GCC unroll 2
    for (j = 0; j < 2; j++) acc[j] = fold_any(acc[j], s.text[j], kt[j] + 1, s.h[j]);
#pragma GCC unroll 2
    for (j = 0; j < 2; j++)
        _mm_storeu_si128((__m128i *)(encrypting ? m[j].tag : computed[j]),
                         _mm_xor_si128(byte_reverse(acc[j]), s.b[j][1]));

    engine_wipe(&s, sizeof(s));
}
