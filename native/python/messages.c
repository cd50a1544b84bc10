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
    if (a->nonce.len < ENGINE_NONCE_MIN_BYTES || a->nonce.len > ENGINE_NONCE_MAX_BYTES) {
        PyErr_Format(VALUE_ERROR, "nonce must be %d to %d bytes, got %zd", ENGINE_NONCE_MIN_BYTES,
                     ENGINE_NONCE_MAX_BYTES, a->nonce.len);
        goto fail;
    }
    if (get_view(args[2], &a->data, "data", 0) != 0) goto fail;
    if (nargs == 4 && args[3] != Py_None) {
        if (get_view(args[3], &a->aad, "associated_data", 0) != 0) goto fail;
        a->have_aad = 1;
    }
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
