/* Record-wise byte work on whole batches: base64url (RFC 4648 section 5, no padding) and
 * scattered copies. Each runs on threads through engine_parallel, with no per-record call
 * from Python. */
#include <pthread.h>
#include <string.h>

#include "backend.h"

static const uint8_t B64URL[64] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static uint8_t DEC[256];
static pthread_once_t dec_once = PTHREAD_ONCE_INIT;

static void dec_build(void) {
    int i;
    memset(DEC, 0xFF, sizeof(DEC));
    for (i = 0; i < 64; i++) DEC[B64URL[i]] = (uint8_t)i;
}

typedef struct b64_ctx {
    const uint8_t *in;
    const int64_t *offsets;
    const uint8_t *prefix;
    size_t prefix_len;
    uint8_t *out;
    const int64_t *out_offsets;
    uint8_t *status;
} b64_ctx;

static int64_t encode_range(void *arg, size_t begin, size_t end) {
    const b64_ctx *c = (const b64_ctx *)arg;
    size_t i;
    for (i = begin; i < end; i++) {
        const uint8_t *s = c->in + c->offsets[i];
        size_t len = (size_t)(c->offsets[i + 1] - c->offsets[i]), k;
        uint8_t *d = c->out + c->out_offsets[i];
        memcpy(d, c->prefix, c->prefix_len);
        d += c->prefix_len;
        for (k = 0; k + 3 <= len; k += 3, d += 4) {
            uint32_t v = (uint32_t)s[k] << 16 | (uint32_t)s[k + 1] << 8 | s[k + 2];
            d[0] = B64URL[v >> 18];
            d[1] = B64URL[(v >> 12) & 63];
            d[2] = B64URL[(v >> 6) & 63];
            d[3] = B64URL[v & 63];
        }
        if (len - k == 1) {
            uint32_t v = (uint32_t)s[k] << 16;
            *d++ = B64URL[v >> 18];
            *d++ = B64URL[(v >> 12) & 63];
        } else if (len - k == 2) {
            uint32_t v = (uint32_t)s[k] << 16 | (uint32_t)s[k + 1] << 8;
            *d++ = B64URL[v >> 18];
            *d++ = B64URL[(v >> 12) & 63];
            *d++ = B64URL[(v >> 6) & 63];
        }
    }
    return 0;
}

int engine_b64url_encode_batch(size_t n, const uint8_t *in, const int64_t *offsets,
                               const uint8_t *prefix, size_t prefix_len, uint8_t *out,
                               const int64_t *out_offsets, int threads) {
    b64_ctx c = {.in = in, .offsets = offsets, .prefix = prefix, .prefix_len = prefix_len,
                 .out = out, .out_offsets = out_offsets};
    int64_t rc;
    if (offsets == NULL || out_offsets == NULL || (prefix_len > 0 && prefix == NULL)) return ENGINE_EINVAL;
    if (n == 0) return ENGINE_OK;
    if (out == NULL || (offsets[n] > offsets[0] && in == NULL)) return ENGINE_EINVAL;
    rc = engine_parallel(n, offsets, threads, encode_range, &c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}

static int64_t decode_range(void *arg, size_t begin, size_t end) {
    const b64_ctx *c = (const b64_ctx *)arg;
    int64_t bad = 0;
    size_t i;
    for (i = begin; i < end; i++) {
        const uint8_t *s = c->in + c->offsets[i];
        size_t len = (size_t)(c->offsets[i + 1] - c->offsets[i]), k;
        uint8_t *d = c->out + c->out_offsets[i];
        uint8_t status = ENGINE_B64_OK, acc = 0;
        if (len < c->prefix_len || memcmp(s, c->prefix, c->prefix_len) != 0) {
            status = ENGINE_B64_PREFIX;
        } else {
            s += c->prefix_len;
            len -= c->prefix_len;
            if (len % 4 == 1 ||
                (uint64_t)(c->out_offsets[i + 1] - c->out_offsets[i]) != len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0)) {
                status = ENGINE_B64_LENGTH;
            } else {
                for (k = 0; k + 4 <= len; k += 4, d += 3) {
                    uint8_t a = DEC[s[k]], b = DEC[s[k + 1]], e = DEC[s[k + 2]], f = DEC[s[k + 3]];
                    uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)e << 6 | f;
                    acc |= a | b | e | f;
                    d[0] = (uint8_t)(v >> 16);
                    d[1] = (uint8_t)(v >> 8);
                    d[2] = (uint8_t)v;
                }
                if (len - k == 2) {
                    uint8_t a = DEC[s[k]], b = DEC[s[k + 1]];
                    acc |= a | b;
                    d[0] = (uint8_t)(a << 2 | (b & 0x3F) >> 4);
                    if ((acc & 0xC0) == 0 && (b & 15) != 0) status = ENGINE_B64_NONCANONICAL;
                } else if (len - k == 3) {
                    uint8_t a = DEC[s[k]], b = DEC[s[k + 1]], e = DEC[s[k + 2]];
                    acc |= a | b | e;
                    d[0] = (uint8_t)(a << 2 | (b & 0x3F) >> 4);
                    d[1] = (uint8_t)((b & 15) << 4 | (e & 0x3F) >> 2);
                    if ((acc & 0xC0) == 0 && (e & 3) != 0) status = ENGINE_B64_NONCANONICAL;
                }
                if (acc & 0xC0) status = ENGINE_B64_CHARACTER; /* 0xFF marks a non-alphabet byte */
            }
        }
        if (status != ENGINE_B64_OK) {
            memset(c->out + c->out_offsets[i], 0, (size_t)(c->out_offsets[i + 1] - c->out_offsets[i]));
            bad++;
        }
        c->status[i] = status;
    }
    return bad;
}

int64_t engine_b64url_decode_batch(size_t n, const uint8_t *in, const int64_t *offsets,
                                   const uint8_t *prefix, size_t prefix_len, uint8_t *out,
                                   const int64_t *out_offsets, uint8_t *status, int threads) {
    b64_ctx c = {.in = in, .offsets = offsets, .prefix = prefix, .prefix_len = prefix_len,
                 .out = out, .out_offsets = out_offsets, .status = status};
    if (offsets == NULL || out_offsets == NULL || (prefix_len > 0 && prefix == NULL)) return ENGINE_EINVAL;
    if (n == 0) return 0;
    if (status == NULL || (offsets[n] > offsets[0] && in == NULL) ||
        (out_offsets[n] > out_offsets[0] && out == NULL))
        return ENGINE_EINVAL;
    pthread_once(&dec_once, dec_build);
    return engine_parallel(n, offsets, threads, decode_range, &c);
}

typedef struct copy_ctx {
    const uint8_t *src;
    const int64_t *src_starts;
    const int64_t *lengths;
    uint8_t *dst;
    const int64_t *dst_starts;
} copy_ctx;

static int64_t copy_range(void *arg, size_t begin, size_t end) {
    const copy_ctx *c = (const copy_ctx *)arg;
    size_t i;
    for (i = begin; i < end; i++)
        memcpy(c->dst + c->dst_starts[i], c->src + (c->src_starts ? c->src_starts[i] : 0),
               (size_t)c->lengths[i]);
    return 0;
}

int engine_gather(size_t n, const uint8_t *src, const int64_t *src_starts, const int64_t *lengths,
                  uint8_t *dst, const int64_t *dst_starts, int threads) {
    copy_ctx c = {src, src_starts, lengths, dst, dst_starts};
    int64_t rc;
    if (n == 0) return ENGINE_OK;
    if (src == NULL || lengths == NULL || dst == NULL || dst_starts == NULL) return ENGINE_EINVAL;
    rc = engine_parallel(n, NULL, threads, copy_range, &c);
    return rc < 0 ? (int)rc : ENGINE_OK;
}
