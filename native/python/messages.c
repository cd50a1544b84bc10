/* One message at a time, as cryptography's AESGCM.encrypt/decrypt: the output bytes object is
 * made here (PyBytes_FromStringAndSize(NULL, n), no zeroing) and the core seals or opens straight
 * into it. Arguments are any C-contiguous buffers; sizes are checked before the core is called.
 * The GIL is released for messages large enough for it to matter. */
#include <string.h>

#include "module.h"

#define RELEASE_GIL_MIN 4096

/* The key handle's address, as engine._native.KeyHandle.address gives it. */
static const engine_key *key_at(PyObject *addr) {
    void *p = PyLong_AsVoidPtr(addr);
    if (p == NULL && !PyErr_Occurred())
        PyErr_SetString(VALUE_ERROR, "not a key handle");
    return (const engine_key *)p;
}

typedef struct args3 {
    Py_buffer nonce, data, aad;
    int have_aad;
} args3;

static void release3(args3 *a) {
    if (a->nonce.obj) PyBuffer_Release(&a->nonce);
    if (a->data.obj) PyBuffer_Release(&a->data);
    if (a->have_aad) PyBuffer_Release(&a->aad);
}

/* Nonce bytes of a token sealed with this key: the engine's 16, or XAES-256-GCM's 24. */
static size_t token_nonce_bytes(const engine_key *key) {
    return g_core.key_algorithm(key) == ENGINE_ALG_XAES_GCM ? ENGINE_XAES_NONCE_BYTES : 16;
}

/* (key address, nonce, data[, associated_data]) -> views, the nonce size checked. */
static const engine_key *parse(PyObject *const *args, Py_ssize_t nargs, const char *name,
                               args3 *a) {
    const engine_key *key;
    memset(a, 0, sizeof(*a));
    if (nargs < 3 || nargs > 4) {
        PyErr_Format(PyExc_TypeError, "%s() takes the key, nonce, data and optional associated data",
                     name);
        return NULL;
    }
    if ((key = key_at(args[0])) == NULL) return NULL;
    if (get_view(args[1], &a->nonce, "nonce", 0) != 0) return NULL;
    if (g_core.key_algorithm(key) == ENGINE_ALG_XAES_GCM) {
        if (a->nonce.len != ENGINE_XAES_NONCE_BYTES) {
            PyErr_Format(VALUE_ERROR, "XAES-256-GCM nonces are %d bytes, got %zd",
                         ENGINE_XAES_NONCE_BYTES, a->nonce.len);
            goto fail;
        }
    } else if (a->nonce.len < ENGINE_NONCE_MIN_BYTES || a->nonce.len > ENGINE_NONCE_MAX_BYTES) {
        PyErr_Format(VALUE_ERROR, "nonce must be %d to %d bytes, got %zd", ENGINE_NONCE_MIN_BYTES,
                     ENGINE_NONCE_MAX_BYTES, a->nonce.len);
        goto fail;
    }
    if (get_view(args[2], &a->data, "data", 0) != 0) goto fail;
    if (get_optional_view(nargs == 4 ? args[3] : Py_None, &a->aad, "associated_data", 0,
                          &a->have_aad) != 0)
        goto fail;
    return key;
fail:
    release3(a);
    return NULL;
}

static PyObject *too_long(void) {
    PyErr_Format(g_too_long ? g_too_long : PyExc_ValueError,
                 "data exceeds GCM's limit of %llu bytes", (unsigned long long)ENGINE_MESSAGE_MAX_BYTES);
    return NULL;
}

PyObject *message_seal(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    args3 a;
    const engine_key *key = parse(args, nargs, "seal", &a);
    PyObject *out;
    uint8_t *o;
    uint64_t len;
    int rc;
    if (key == NULL) return NULL;
    len = (uint64_t)a.data.len;
    if (len > ENGINE_MESSAGE_MAX_BYTES) {
        release3(&a);
        return too_long();
    }
    out = PyBytes_FromStringAndSize(NULL, a.data.len + ENGINE_TAG_BYTES);
    if (out == NULL) {
        release3(&a);
        return NULL;
    }
    o = (uint8_t *)PyBytes_AS_STRING(out);
    if (len >= RELEASE_GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        rc = g_core.seal(key, o, o + len, a.data.buf, len, a.nonce.buf, (size_t)a.nonce.len,
                         a.have_aad ? a.aad.buf : NULL, a.have_aad ? (uint64_t)a.aad.len : 0);
        Py_END_ALLOW_THREADS
    } else {
        rc = g_core.seal(key, o, o + len, a.data.buf, len, a.nonce.buf, (size_t)a.nonce.len,
                         a.have_aad ? a.aad.buf : NULL, a.have_aad ? (uint64_t)a.aad.len : 0);
    }
    release3(&a);
    if (rc != ENGINE_OK) {
        Py_DECREF(out);
        return raise_code(rc);
    }
    return out;
}

PyObject *message_open(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    args3 a;
    const engine_key *key = parse(args, nargs, "open", &a);
    PyObject *out;
    const uint8_t *d;
    uint64_t len;
    int rc;
    if (key == NULL) return NULL;
    if (a.data.len < ENGINE_TAG_BYTES) { /* no room for the tag: cannot authenticate */
        release3(&a);
        return raise_code(ENGINE_EAUTH);
    }
    len = (uint64_t)a.data.len - ENGINE_TAG_BYTES;
    if (len > ENGINE_MESSAGE_MAX_BYTES) {
        release3(&a);
        return too_long();
    }
    /* Fresh even for 0 or 1 bytes: with a NULL source CPython shares only the empty object,
     * and nothing is written to that one. */
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (out == NULL) {
        release3(&a);
        return NULL;
    }
    d = (const uint8_t *)a.data.buf;
    if (len >= RELEASE_GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        rc = g_core.open(key, (uint8_t *)PyBytes_AS_STRING(out), d, len, d + len, a.nonce.buf,
                         (size_t)a.nonce.len, a.have_aad ? a.aad.buf : NULL,
                         a.have_aad ? (uint64_t)a.aad.len : 0);
        Py_END_ALLOW_THREADS
    } else {
        rc = g_core.open(key, (uint8_t *)PyBytes_AS_STRING(out), d, len, d + len, a.nonce.buf,
                         (size_t)a.nonce.len, a.have_aad ? a.aad.buf : NULL,
                         a.have_aad ? (uint64_t)a.aad.len : 0);
    }
    release3(&a);
    if (rc != ENGINE_OK) { /* the core has wiped the output */
        Py_DECREF(out);
        return raise_code(rc);
    }
    return out;
}

/* ---- one text token: prefix || base64url(header || nonce || ciphertext || tag) ----
 * Built on the core's batch token calls with n = 1 (one thread, no copy of the token layout
 * here): the nonce (token_nonce_bytes) comes from the core's CSPRNG pool, the AAD is header ||
 * the caller's AAD. */

#define STACK_BYTES 1024

/* A readable view of str (as UTF-8) or a bytes-like object; str views point into the str's
 * cached UTF-8 (no copy for ASCII text). */
typedef struct text_view {
    const uint8_t *p;
    Py_ssize_t len;
    Py_buffer buf;
    int have_buf;
} text_view;

static int text_view_get(PyObject *obj, text_view *v, const char *what) {
    memset(v, 0, sizeof(*v));
    if (obj == Py_None) return 0;
    if (PyUnicode_Check(obj)) {
        const char *u = PyUnicode_AsUTF8AndSize(obj, &v->len);
        if (u == NULL) {
            /* a lone surrogate: the UnicodeEncodeError would carry the text */
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) return -1;
            PyErr_Clear();
            PyErr_Format(VALUE_ERROR, "%s is str that UTF-8 cannot encode (a lone surrogate)",
                         what);
            return -1;
        }
        v->p = (const uint8_t *)u;
        return 0;
    }
    if (get_view(obj, &v->buf, what, 0) != 0) return -1;
    v->have_buf = 1;
    v->p = (const uint8_t *)v->buf.buf;
    v->len = v->buf.len;
    return 0;
}

static void text_view_release(text_view *v) {
    if (v->have_buf) PyBuffer_Release(&v->buf);
}

static Py_ssize_t b64url_len(Py_ssize_t n) { return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0); }

/* seal_text_token(key_address, header, data, aad, prefix) -> str */
PyObject *token_seal_text(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const engine_key *key;
    text_view data, aad;
    Py_buffer header, prefix;
    PyObject *out = NULL;
    uint8_t stack[STACK_BYTES], *bin = stack;
    Py_ssize_t bin_len, text_len, nonce_len;
    int64_t offsets[2], start = 0, out_offsets[2];
    int rc;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "seal_text_token(key_address, header, data, aad, prefix)");
        return NULL;
    }
    if ((key = key_at(args[0])) == NULL) return NULL;
    if (get_view(args[1], &header, "header", 0) != 0) return NULL;
    if (get_view(args[4], &prefix, "prefix", 0) != 0) {
        PyBuffer_Release(&header);
        return NULL;
    }
    if (text_view_get(args[2], &data, "data") != 0) goto done_views;
    if (args[2] == Py_None) {
        PyErr_Format(TYPE_ERROR, "data must be str or bytes-like, not None");
        goto done_data;
    }
    if (text_view_get(args[3], &aad, "aad") != 0) goto done_data;
    if ((uint64_t)data.len > ENGINE_MESSAGE_MAX_BYTES) {
        too_long();
        goto done_all;
    }
    nonce_len = (Py_ssize_t)token_nonce_bytes(key);
    bin_len = header.len + nonce_len + data.len + ENGINE_TAG_BYTES;
    if (bin_len > STACK_BYTES && (bin = PyMem_Malloc((size_t)bin_len)) == NULL) {
        PyErr_NoMemory();
        goto done_all;
    }
    offsets[0] = 0;
    offsets[1] = data.len;
    rc = g_core.seal_tokens(key, 1, data.p, offsets, header.buf, (size_t)header.len, 1,
                            (size_t)nonce_len, bin, &start, aad.p, NULL, (uint64_t)aad.len, 1);
    if (rc != ENGINE_OK) {
        raise_code(rc);
        goto done_bin;
    }
    text_len = prefix.len + b64url_len(bin_len);
    if ((out = PyUnicode_New(text_len, 127)) == NULL) goto done_bin;
    offsets[1] = bin_len;
    out_offsets[0] = 0;
    out_offsets[1] = text_len;
    rc = g_core.b64url_encode(1, bin, offsets, prefix.buf, (size_t)prefix.len,
                              PyUnicode_1BYTE_DATA(out), out_offsets, 1);
    if (rc != ENGINE_OK) {
        Py_CLEAR(out);
        raise_code(rc);
    }
done_bin:
    if (bin != stack) PyMem_Free(bin);
done_all:
    text_view_release(&aad);
done_data:
    text_view_release(&data);
done_views:
    PyBuffer_Release(&header);
    PyBuffer_Release(&prefix);
    return out;
}

/* An ASCII view of a text token given as str or bytes-like; 0, or -1 when it cannot be one
 * (the caller's general path then says why). */
static int token_chars(PyObject *obj, text_view *v) {
    memset(v, 0, sizeof(*v));
    if (PyUnicode_Check(obj)) {
        if (!PyUnicode_IS_ASCII(obj)) return -1;
        v->p = PyUnicode_1BYTE_DATA(obj);
        v->len = PyUnicode_GET_LENGTH(obj);
        return 0;
    }
    if (PyObject_GetBuffer(obj, &v->buf, PyBUF_C_CONTIGUOUS) != 0) {
        PyErr_Clear();
        return -1;
    }
    v->have_buf = 1;
    v->p = v->buf.buf;
    v->len = v->buf.len;
    return 0;
}

/* token_header(token, prefix, header_len) -> bytes of the token's header, or None when the
 * token is not prefix || strict base64url long enough to hold one. */
PyObject *token_header_of(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    text_view tok;
    Py_buffer prefix;
    Py_ssize_t header_len, chars;
    uint8_t head[64], status;
    int64_t offsets[2], out_offsets[2];
    int64_t bad;
    PyObject *result = Py_None;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "token_header(token, prefix, header_len)");
        return NULL;
    }
    header_len = PyLong_AsSsize_t(args[2]);
    if (header_len == -1 && PyErr_Occurred()) return NULL;
    if (header_len < 1 || header_len > (Py_ssize_t)sizeof(head) - 2 || header_len % 3 != 0) {
        PyErr_SetString(VALUE_ERROR, "header_len must be a positive multiple of 3, at most 60");
        return NULL;
    }
    if (get_view(args[1], &prefix, "prefix", 0) != 0) return NULL;
    chars = header_len / 3 * 4;
    if (token_chars(args[0], &tok) == 0 && tok.len >= prefix.len + chars) {
        offsets[0] = 0;
        offsets[1] = prefix.len + chars;
        out_offsets[0] = 0;
        out_offsets[1] = header_len;
        bad = g_core.b64url_decode(1, tok.p, offsets, prefix.buf, (size_t)prefix.len, head,
                                   out_offsets, &status, 1);
        if (bad < 0) {
            text_view_release(&tok);
            PyBuffer_Release(&prefix);
            return raise_code((int)bad);
        }
        if (bad == 0) result = PyBytes_FromStringAndSize((const char *)head, header_len);
        else Py_INCREF(result);
    } else {
        Py_INCREF(result);
    }
    text_view_release(&tok);
    PyBuffer_Release(&prefix);
    return result;
}

/* open_text_token(key_address, token, aad, prefix, header_len, bind_header, as_text)
 * -> str (as_text) or bytes; None when the token is not strict prefix || base64url of at least
 * header, nonce and tag (the caller's general path then says why). Raises InvalidTag on a
 * failed tag, and a ValueError without the data when as_text and the plaintext is not UTF-8. */
PyObject *token_open_text(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const engine_key *key;
    text_view tok, aad;
    Py_buffer prefix;
    Py_ssize_t header_len, body, bin_len, plain_len, nonce_len;
    uint8_t stack[STACK_BYTES], *bin = stack, *plain, failed = 0, status;
    int64_t offsets[2], out_offsets[2], start = 0;
    int64_t bad;
    int bind, as_text;
    PyObject *out = NULL;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "open_text_token(key_address, token, aad, prefix, "
                                         "header_len, bind_header, as_text)");
        return NULL;
    }
    if ((key = key_at(args[0])) == NULL) return NULL;
    nonce_len = (Py_ssize_t)token_nonce_bytes(key);
    header_len = PyLong_AsSsize_t(args[4]);
    if (header_len == -1 && PyErr_Occurred()) return NULL;
    if (header_len < 0 || header_len > 4096) {
        PyErr_SetString(VALUE_ERROR, "header_len must be from 0 to 4096");
        return NULL;
    }
    bind = PyObject_IsTrue(args[5]);
    as_text = PyObject_IsTrue(args[6]);
    if (bind < 0 || as_text < 0) return NULL;
    if (get_view(args[3], &prefix, "prefix", 0) != 0) return NULL;
    if (text_view_get(args[2], &aad, "aad") != 0) {
        PyBuffer_Release(&prefix);
        return NULL;
    }
    if (token_chars(args[1], &tok) != 0 || tok.len < prefix.len) goto not_a_token;
    body = tok.len - prefix.len;
    if (body % 4 == 1) goto not_a_token;
    bin_len = body / 4 * 3 + (body % 4 ? body % 4 - 1 : 0);
    if (bin_len < header_len + nonce_len + ENGINE_TAG_BYTES) goto not_a_token;
    /* one buffer: the binary token, then room for its plaintext */
    plain_len = bin_len - header_len - nonce_len - ENGINE_TAG_BYTES;
    if (bin_len + plain_len > STACK_BYTES &&
        (bin = PyMem_Malloc((size_t)(bin_len + plain_len))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    plain = bin + bin_len;
    offsets[0] = 0;
    offsets[1] = tok.len;
    out_offsets[0] = 0;
    out_offsets[1] = bin_len;
    bad = g_core.b64url_decode(1, tok.p, offsets, prefix.buf, (size_t)prefix.len, bin,
                               out_offsets, &status, 1);
    if (bad < 0) {
        raise_code((int)bad);
        goto done;
    }
    if (bad > 0) goto not_a_token;
    offsets[1] = bin_len;
    bad = g_core.open_tokens(key, 1, bin, offsets, (size_t)header_len, bind, (size_t)nonce_len,
                             plain, &start, aad.p, NULL, (uint64_t)aad.len, &failed, 1);
    if (bad < 0) {
        raise_code((int)bad);
        goto done;
    }
    if (bad > 0) {
        raise_code(ENGINE_EAUTH);
        goto done;
    }
    if (!as_text) {
        out = PyBytes_FromStringAndSize((const char *)plain, plain_len);
    } else if ((out = PyUnicode_DecodeUTF8((const char *)plain, plain_len, "strict")) == NULL) {
        /* the UnicodeDecodeError holds the plaintext: drop it, raise one without */
        PyErr_Clear();
        PyErr_SetString(VALUE_ERROR, "decrypted data is not valid UTF-8 text");
    }
    wipe(plain, (size_t)plain_len);
    goto done;
not_a_token:
    out = Py_NewRef(Py_None);
done:
    if (bin != stack) PyMem_Free(bin);
    text_view_release(&tok);
    text_view_release(&aad);
    PyBuffer_Release(&prefix);
    return out;
}

/* ---- a sealed batch opened into one bytes object per record ----
 * open_list(key_address, data, offsets, nonces, tags, aad, aad_offsets, threads)
 *   -> (list[bytes], failed) where failed is None, or n bytes (1 = failed, its object zeroed).
 * The objects are made first (their storage is where the plaintext lands: one pass over the
 * data, no second buffer), then the core opens into them on threads without the GIL. The
 * arguments were checked by engine.aead (shapes, sizes); offsets are copied before any object is
 * made, so nothing a collection runs can move them. */
PyObject *batch_open_list(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const engine_key *key;
    Py_buffer data, off, nonces, tags, aad, aad_off;
    int have_aad = 0, have_aad_off = 0, threads;
    Py_ssize_t n = 0, i;
    int64_t *o = NULL, nfailed;
    uint8_t **outs = NULL, *failed = NULL;
    PyObject *list = NULL, *result = NULL;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "open_list(key_address, data, offsets, nonces, tags, "
                                         "aad, aad_offsets, threads)");
        return NULL;
    }
    if ((key = key_at(args[0])) == NULL) return NULL;
    threads = PyLong_AsLong(args[7]) > 0 ? (int)PyLong_AsLong(args[7]) : 1;
    if (PyErr_Occurred()) return NULL;
    if (get_view(args[1], &data, "data", 0) != 0) return NULL;
    if (get_view(args[2], &off, "offsets", 0) != 0) goto release_data;
    if (get_view(args[3], &nonces, "nonces", 0) != 0) goto release_off;
    if (get_view(args[4], &tags, "tags", 0) != 0) goto release_nonces;
    if (get_optional_view(args[5], &aad, "aad", 0, &have_aad) != 0) goto release_tags;
    if (get_optional_view(args[6], &aad_off, "aad_offsets", 0, &have_aad_off) != 0) goto release_aad;
    n = off.len / (Py_ssize_t)sizeof(int64_t) - 1;
    if (n < 0 || off.len % (Py_ssize_t)sizeof(int64_t) != 0 || tags.len != n * ENGINE_TAG_BYTES ||
        (n > 0 && (nonces.len % n != 0))) {
        PyErr_SetString(VALUE_ERROR, "open_list: inconsistent batch arrays");
        goto release_all;
    }
    o = PyMem_Malloc((size_t)(n + 1) * sizeof(int64_t));
    outs = PyMem_Calloc((size_t)(n > 0 ? n : 1), sizeof(uint8_t *));
    failed = PyMem_Malloc((size_t)(n > 0 ? n : 1));
    if (o == NULL || outs == NULL || failed == NULL) {
        PyErr_NoMemory();
        goto release_all;
    }
    memcpy(o, off.buf, (size_t)(n + 1) * sizeof(int64_t));
    for (i = 0; i < n; i++) {
        if (o[i] < 0 || o[i] > o[i + 1] || o[i + 1] > (int64_t)data.len) {
            PyErr_SetString(VALUE_ERROR, "offsets must be non-decreasing and within data");
            goto release_all;
        }
    }
    if ((list = PyList_New(n)) == NULL) goto release_all;
    for (i = 0; i < n; i++) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(o[i + 1] - o[i]));
        if (b == NULL) goto release_all;
        PyList_SET_ITEM(list, i, b);
        outs[i] = (uint8_t *)PyBytes_AS_STRING(b); /* the shared b"" is never written: length 0 */
    }
    Py_BEGIN_ALLOW_THREADS
    nfailed = g_core.open_batch_each(key, (size_t)n, data.buf, o, outs, nonces.buf,
                                     n > 0 ? (size_t)(nonces.len / n) : ENGINE_NONCE_MIN_BYTES,
                                     tags.buf, have_aad ? aad.buf : NULL,
                                     have_aad_off ? aad_off.buf : NULL,
                                     have_aad && !have_aad_off ? (uint64_t)aad.len : 0, failed,
                                     threads);
    Py_END_ALLOW_THREADS
    if (nfailed < 0) {
        raise_code((int)nfailed);
        goto release_all;
    }
    if (nfailed == 0) {
        result = PyTuple_Pack(2, list, Py_None);
    } else {
        PyObject *mask = PyBytes_FromStringAndSize((const char *)failed, n);
        if (mask != NULL) result = PyTuple_Pack(2, list, mask);
        Py_XDECREF(mask);
    }
release_all:
    Py_XDECREF(list);
    PyMem_Free(o);
    PyMem_Free(outs);
    PyMem_Free(failed);
    if (have_aad_off) PyBuffer_Release(&aad_off);
release_aad:
    if (have_aad) PyBuffer_Release(&aad);
release_tags:
    PyBuffer_Release(&tags);
release_nonces:
    PyBuffer_Release(&nonces);
release_off:
    PyBuffer_Release(&off);
release_data:
    PyBuffer_Release(&data);
    return result;
}

/* ---- a list of bytes objects sealed where they are (no packing copy) ----
 * bytes_layout(values, min_average) -> int64 offsets (bytes) of a list or tuple of bytes objects
 * laid end to end, or None when a value is not exactly bytes or the records average fewer than
 * min_average bytes (packing them is then as cheap as pointing at them).
 * seal_list(key_address, values, offsets, out, nonces, fill_nonces, tags, aad, aad_offsets,
 * aad_len, threads): seals record i from values[i]'s own storage into out at offsets[i]. The
 * values are held (a tuple of them) while the core runs without the GIL; each must still be the
 * bytes of the length the layout gave it, or nothing is written. */
PyObject *list_bytes_layout(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *values, *offsets;
    Py_ssize_t n, i, min_average;
    int64_t *o, total = 0;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "bytes_layout(values, min_average)");
        return NULL;
    }
    values = args[0];
    if ((min_average = PyLong_AsSsize_t(args[1])) < 0 && PyErr_Occurred()) return NULL;
    if (!PyList_Check(values) && !PyTuple_Check(values)) Py_RETURN_NONE;
    n = PySequence_Fast_GET_SIZE(values);
    for (i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        if (!PyBytes_CheckExact(v)) Py_RETURN_NONE;
        total += PyBytes_GET_SIZE(v);
    }
    if (n == 0 || total / n < min_average) Py_RETURN_NONE;
    offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(int64_t));
    if (offsets == NULL) return NULL;
    o = (int64_t *)PyBytes_AS_STRING(offsets);
    o[0] = 0;
    for (i = 0, total = 0; i < n && i < PySequence_Fast_GET_SIZE(values); i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        if (!PyBytes_CheckExact(v)) break;
        total += PyBytes_GET_SIZE(v);
        o[i + 1] = total;
    }
    if (i != n) { /* changed by a collection that ran when the offsets object was made */
        Py_DECREF(offsets);
        Py_RETURN_NONE;
    }
    return offsets;
}

PyObject *list_seal(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const engine_key *key;
    PyObject *items = NULL, *result = NULL;
    Py_buffer off, out, nonces, tags, aad, aad_off;
    int have_aad = 0, have_aad_off = 0, fill, threads, rc;
    Py_ssize_t n, i;
    const uint8_t **ins = NULL;
    uint64_t aad_len;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "seal_list(key_address, values, offsets, out, nonces, "
                                         "fill_nonces, tags, aad, aad_offsets, aad_len, threads)");
        return NULL;
    }
    if ((key = key_at(args[0])) == NULL) return NULL;
    if ((fill = PyObject_IsTrue(args[5])) < 0) return NULL;
    aad_len = PyLong_AsUnsignedLongLong(args[9]);
    threads = (int)PyLong_AsLong(args[10]);
    if (PyErr_Occurred()) return NULL;
    if ((items = PySequence_Tuple(args[1])) == NULL) return NULL;
    if (get_view(args[2], &off, "offsets", 0) != 0) goto release_items;
    if (get_view(args[3], &out, "out", PyBUF_WRITABLE) != 0) goto release_off;
    if (get_view(args[4], &nonces, "nonces", PyBUF_WRITABLE) != 0) goto release_out;
    if (get_view(args[6], &tags, "tags", PyBUF_WRITABLE) != 0) goto release_nonces;
    if (get_optional_view(args[7], &aad, "aad", 0, &have_aad) != 0) goto release_tags;
    if (get_optional_view(args[8], &aad_off, "aad_offsets", 0, &have_aad_off) != 0) goto release_aad;
    n = PyTuple_GET_SIZE(items);
    if (off.len != (n + 1) * (Py_ssize_t)sizeof(int64_t) || tags.len != n * ENGINE_TAG_BYTES ||
        (n > 0 && nonces.len % n != 0)) {
        PyErr_SetString(VALUE_ERROR, "seal_list: inconsistent batch arrays");
        goto release_all;
    }
    if ((ins = PyMem_Calloc((size_t)(n > 0 ? n : 1), sizeof(*ins))) == NULL) {
        PyErr_NoMemory();
        goto release_all;
    }
    for (i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(items, i);
        const int64_t *o = (const int64_t *)off.buf;
        if (!PyBytes_CheckExact(v) || PyBytes_GET_SIZE(v) != o[i + 1] - o[i] ||
            o[i + 1] > (int64_t)out.len) {
            PyErr_SetString(PyExc_RuntimeError, "the records changed during the call");
            goto release_all;
        }
        ins[i] = (const uint8_t *)PyBytes_AS_STRING(v);
    }
    Py_BEGIN_ALLOW_THREADS
    rc = g_core.seal_batch_each(key, (size_t)n, ins, off.buf, out.buf, nonces.buf,
                                n > 0 ? (size_t)(nonces.len / n) : ENGINE_NONCE_MIN_BYTES, fill,
                                tags.buf, have_aad ? aad.buf : NULL,
                                have_aad_off ? aad_off.buf : NULL, aad_len, threads);
    Py_END_ALLOW_THREADS
    if (rc != ENGINE_OK) raise_code(rc);
    else result = Py_NewRef(Py_None);
release_all:
    PyMem_Free((void *)ins);
    if (have_aad_off) PyBuffer_Release(&aad_off);
release_aad:
    if (have_aad) PyBuffer_Release(&aad);
release_tags:
    PyBuffer_Release(&tags);
release_nonces:
    PyBuffer_Release(&nonces);
release_out:
    PyBuffer_Release(&out);
release_off:
    PyBuffer_Release(&off);
release_items:
    Py_DECREF(items);
    return result;
}
