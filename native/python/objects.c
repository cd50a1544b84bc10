/* engine._native._objects: the few loops over Python objects that the batch paths cannot avoid,
 * done in C. The cffi module moves bytes; this one builds and reads Python objects in bulk:
 *   - ascii_strings(buffer, offsets): one str per record of an ASCII buffer (text tokens);
 *   - field_values(records, field): record.get(field) for a list of dicts;
 *   - with_field(records, field, values): new dicts, each a copy of records[i] with
 *     field = values[i] (a None value for a record without the field leaves it absent);
 *   - value_kinds(values): which kinds of value (str, bytes, None, other) a list holds;
 *   - packed_size(values), pack_into(values, out): str/bytes records into one buffer plus int64
 *     offsets (Batch.from_list);
 *   - seal/open (messages.c): one message, AESGCM-style (XAES-256-GCM too), into a bytes
 *     object made here;
 *   - seal_text_token/token_header/open_text_token (messages.c): one text token;
 *   - open_list (messages.c): a sealed batch opened straight into one bytes object per record;
 *   - bytes_layout/seal_list (messages.c): a list of bytes sealed from the objects themselves.
 * Plain dicts are read from their storage; a dict subclass through its own get()/__contains__.
 * Python code can run inside these loops (a key's __hash__/__eq__, a dict subclass's keys(), a
 * gc callback), so result lists stay untracked until filled, every item is re-read and held
 * while in use, and buffers are checked after the last allocation that can run a collection.
 * No key, plaintext or token appears in an error message. */
#include <string.h>

#include "module.h"

PyObject *g_type_error, *g_value_error, *g_too_long, *g_invalid_tag, *g_check;
core_api g_core;

/* set_errors(InvalidArgumentType, InvalidArgument, MessageTooLong, InvalidTag, check): this
 * module's own argument errors are typed like the rest of the engine's, core result codes are
 * raised by engine._native._check (one mapping for both native modules), and exceptions raised by
 * the caller's objects (a key's __eq__, say) pass through unchanged. */
static PyObject *set_errors(PyObject *self, PyObject *args) {
    PyObject *type_error, *value_error, *too_long, *invalid_tag, *check;
    if (!PyArg_ParseTuple(args, "OOOOO:set_errors", &type_error, &value_error, &too_long,
                          &invalid_tag, &check))
        return NULL;
    Py_XSETREF(g_type_error, Py_NewRef(type_error));
    Py_XSETREF(g_value_error, Py_NewRef(value_error));
    Py_XSETREF(g_too_long, Py_NewRef(too_long));
    Py_XSETREF(g_invalid_tag, Py_NewRef(invalid_tag));
    Py_XSETREF(g_check, Py_NewRef(check));
    Py_RETURN_NONE;
}

/* set_core(addresses): a dict of the core's function addresses in the cffi module, by the names
 * of engine_aead.h without the "engine_" prefix (seal, open, seal_batch_each, open_batch_each,
 * seal_tokens, open_tokens, b64url_encode_batch, b64url_decode_batch, key_algorithm). */
static int core_entry(PyObject *addresses, const char *name, void **slot) {
    PyObject *addr = PyDict_GetItemString(addresses, name); /* borrowed */
    void *p;
    if (addr == NULL) {
        PyErr_Format(PyExc_KeyError, "set_core: no address for %s", name);
        return -1;
    }
    p = PyLong_AsVoidPtr(addr);
    if (p == NULL) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "set_core: null address for %s", name);
        return -1;
    }
    *slot = p;
    return 0;
}

static PyObject *set_core(PyObject *self, PyObject *addresses) {
    core_api api;
    if (!PyDict_Check(addresses)) {
        PyErr_SetString(PyExc_TypeError, "set_core takes a dict of addresses");
        return NULL;
    }
    if (core_entry(addresses, "seal", (void **)&api.seal) != 0 ||
        core_entry(addresses, "open", (void **)&api.open) != 0 ||
        core_entry(addresses, "open_batch_each", (void **)&api.open_batch_each) != 0 ||
        core_entry(addresses, "seal_batch_each", (void **)&api.seal_batch_each) != 0 ||
        core_entry(addresses, "seal_tokens", (void **)&api.seal_tokens) != 0 ||
        core_entry(addresses, "open_tokens", (void **)&api.open_tokens) != 0 ||
        core_entry(addresses, "b64url_encode_batch", (void **)&api.b64url_encode) != 0 ||
        core_entry(addresses, "b64url_decode_batch", (void **)&api.b64url_decode) != 0 ||
        core_entry(addresses, "key_algorithm", (void **)&api.key_algorithm) != 0)
        return NULL;
    g_core = api;
    Py_RETURN_NONE;
}

PyObject *raise_code(int rc) {
    PyObject *code, *r;
    if (g_check == NULL) {
        PyErr_Format(PyExc_RuntimeError, "native error %d", rc);
        return NULL;
    }
    if ((code = PyLong_FromLong(rc)) == NULL) return NULL;
    r = PyObject_CallOneArg(g_check, code);
    Py_DECREF(code);
    Py_XDECREF(r);
    if (!PyErr_Occurred()) PyErr_Format(PyExc_RuntimeError, "native error %d", rc);
    return NULL;
}

int get_view(PyObject *obj, Py_buffer *view, const char *what, int flags) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | flags) != 0) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError)) return -1;
        if (PyObject_CheckBuffer(obj)) { /* numpy raises ValueError, memoryview BufferError */
            int readable;
            PyErr_Clear();
            readable = PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) == 0;
            if (readable) PyBuffer_Release(view);
            else PyErr_Clear();
            PyErr_Format(VALUE_ERROR, "%s must be a %s buffer", what,
                         readable ? "writable" : "C-contiguous");
            return -1;
        }
        PyErr_Clear();
        PyErr_Format(TYPE_ERROR,
                     "%s must be bytes-like (bytes, bytearray, memoryview, numpy array), not %.100s",
                     what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

int get_optional_view(PyObject *obj, Py_buffer *view, const char *what, int flags, int *have) {
    *have = 0;
    if (obj == Py_None) return 0;
    if (get_view(obj, view, what, flags) != 0) return -1;
    *have = 1;
    return 0;
}

/* True when view holds int64 items (numpy gives "l" on LP64, "q" elsewhere). */
static int is_int64_view(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (v->itemsize != 8 || v->ndim > 1) return 0;
    if (*f == '@' || *f == '=' || (PY_LITTLE_ENDIAN && *f == '<') || (!PY_LITTLE_ENDIAN && *f == '>'))
        return strcmp(f + 1, "q") == 0 || (*f == '@' && SIZEOF_LONG == 8 && strcmp(f + 1, "l") == 0);
    return strcmp(f, "q") == 0 || (SIZEOF_LONG == 8 && strcmp(f, "l") == 0);
}

static PyObject *ascii_strings(PyObject *self, PyObject *args) {
    PyObject *data_obj, *off_obj, *list = NULL;
    Py_buffer data, off;
    const uint8_t *bytes;
    const int64_t *o;
    Py_ssize_t n, i;
    if (!PyArg_ParseTuple(args, "OO:ascii_strings", &data_obj, &off_obj)) return NULL;
    if (get_view(data_obj, &data, "data", 0) != 0) return NULL;
    if (get_view(off_obj, &off, "offsets", PyBUF_FORMAT) != 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (!is_int64_view(&off) || ((uintptr_t)off.buf % _Alignof(int64_t)) != 0 || off.len == 0) {
        PyErr_SetString(VALUE_ERROR, "offsets must be n+1 aligned int64 values (1-D)");
        goto done;
    }
    bytes = (const uint8_t *)data.buf;
    o = (const int64_t *)off.buf;
    n = off.len / (Py_ssize_t)sizeof(int64_t) - 1;
    /* Allocate first: PyList_New can start a cyclic collection (gc callbacks, __del__), i.e. run
     * Python code that rewrites the buffers. Nothing after the checks below runs Python code. */
    list = PyList_New(n);
    if (list == NULL) goto done;
    PyObject_GC_UnTrack(list); /* NULL slots until filled: keep it out of gc.get_objects() */
    for (i = 0; i < n; i++) {
        if (o[i] < 0 || o[i] > o[i + 1] || o[i + 1] > (int64_t)data.len) {
            PyErr_SetString(VALUE_ERROR, "offsets must be non-decreasing and within data");
            Py_CLEAR(list);
            goto done;
        }
    }
    if (n > 0) {
        uint8_t high = 0;
        Py_ssize_t k;
        for (k = (Py_ssize_t)o[0]; k < (Py_ssize_t)o[n]; k++) high |= bytes[k];
        if (high & 0x80) {
            PyErr_SetString(VALUE_ERROR, "records must be ASCII");
            Py_CLEAR(list);
            goto done;
        }
    }
    for (i = 0; i < n; i++) {
        Py_ssize_t len = (Py_ssize_t)(o[i + 1] - o[i]);
        PyObject *s = PyUnicode_New(len, 127);
        if (s == NULL) {
            Py_CLEAR(list);
            goto done;
        }
        memcpy(PyUnicode_1BYTE_DATA(s), bytes + o[i], (size_t)len);
        PyList_SET_ITEM(list, i, s);
    }
    PyObject_GC_Track(list);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&off);
    return list;
}

/* The records as a new reference to a list or tuple (each item is checked to be a dict when the
 * loop reads it, by record_at, which must re-check anyway). */
static PyObject *records_sequence(PyObject *records) {
    if (!PyList_Check(records) && !PyTuple_Check(records)) {
        PyErr_Format(TYPE_ERROR, "records must be a list of dicts, not %.100s",
                     Py_TYPE(records)->tp_name);
        return NULL;
    }
    return Py_NewRef(records);
}

/* seq[i] as a new reference, re-checked: Python code run by the loop (a key's __hash__/__eq__,
 * a dict subclass's get()/keys()) may have shrunk the list or replaced its items. */
static PyObject *record_at(PyObject *seq, Py_ssize_t i) {
    PyObject *r;
    if (i >= PySequence_Fast_GET_SIZE(seq)) {
        PyErr_SetString(PyExc_RuntimeError, "records changed size during the call");
        return NULL;
    }
    r = PySequence_Fast_GET_ITEM(seq, i);
    if (!PyDict_Check(r)) {
        PyErr_Format(TYPE_ERROR, "record %zd is a %.100s, not a dict", i, Py_TYPE(r)->tp_name);
        return NULL;
    }
    return Py_NewRef(r);
}

/* record.get(field) as a new reference (None when absent): the dict's storage for a plain
 * dict, the record's own get() for a subclass (which may override it). */
static PyObject *record_get(PyObject *r, PyObject *field) {
    PyObject *v;
    if (!PyDict_CheckExact(r)) return PyObject_CallMethod(r, "get", "O", field);
    v = PyDict_GetItemWithError(r, field);
    if (v == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    return Py_NewRef(v);
}

static PyObject *field_values(PyObject *self, PyObject *args) {
    PyObject *records, *field, *seq, *list;
    Py_ssize_t i, n;
    if (!PyArg_ParseTuple(args, "OO:field_values", &records, &field)) return NULL;
    if ((seq = records_sequence(records)) == NULL) return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    list = PyList_New(n);
    if (list != NULL) PyObject_GC_UnTrack(list); /* NULL slots: keep it out of gc.get_objects() */
    for (i = 0; list != NULL && i < n; i++) {
        PyObject *r = record_at(seq, i), *v = NULL;
        if (r != NULL) {
            v = record_get(r, field);
            Py_DECREF(r);
        }
        if (v == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, v);
    }
    if (list != NULL) PyObject_GC_Track(list);
    Py_DECREF(seq);
    return list;
}

/* One new dict: a copy of r with field = v; a None v for a record without the field (as the
 * record's own __contains__ says) leaves it absent. A new reference, or NULL on error. */
static PyObject *copy_with(PyObject *r, PyObject *field, PyObject *v) {
    PyObject *copy = PyDict_Copy(r);
    int has = 1;
    if (copy == NULL) return NULL;
    if (v == Py_None) {
        has = PyDict_CheckExact(r) ? PyDict_Contains(r, field) : PySequence_Contains(r, field);
        if (has < 0) Py_CLEAR(copy);
    }
    if (copy != NULL && has && PyDict_SetItem(copy, field, v) != 0) Py_CLEAR(copy);
    return copy;
}

/* A plain dict with only exact-str keys: copying it, and looking up or setting an exact-str
 * field in it or its copy, runs no Python code (no __hash__, __eq__, keys() or __del__). */
static int plain_record(PyObject *r) {
    Py_ssize_t pos = 0;
    PyObject *k, *val;
    if (!PyDict_CheckExact(r)) return 0;
    while (PyDict_Next(r, &pos, &k, &val))
        if (!PyUnicode_CheckExact(k)) return 0;
    return 1;
}

static PyObject *with_field(PyObject *self, PyObject *args) {
    PyObject *records, *field, *values, *seq, *vals = NULL, *list = NULL;
    Py_ssize_t i, n;
    int paused = 0;
    if (!PyArg_ParseTuple(args, "OOO:with_field", &records, &field, &values)) return NULL;
    if ((seq = records_sequence(records)) == NULL) return NULL;
    if (!PyList_Check(values) && !PyTuple_Check(values)) {
        PyErr_Format(TYPE_ERROR, "values must be a list, not %.100s", Py_TYPE(values)->tp_name);
        goto done;
    }
    vals = Py_NewRef(values);
    n = PySequence_Fast_GET_SIZE(seq);
    if (PySequence_Fast_GET_SIZE(vals) != n) {
        PyErr_SetString(VALUE_ERROR, "values must have one item per record");
        goto done;
    }
    list = PyList_New(n);
    if (list == NULL) goto done;
    PyObject_GC_UnTrack(list); /* NULL slots: keep it out of gc.get_objects() */
    /* The cyclic collector runs every 700 new containers and would re-traverse the dicts made so
     * far (measured: 20-25 % of the loop on 1M records), so it is paused while the records are
     * plain (see plain_record): then no Python code runs and no other thread can, and nobody can
     * observe the pause. It is switched back on before the first record that is not plain. */
    if (PyUnicode_CheckExact(field)) paused = PyGC_Disable();
    for (i = 0; list != NULL && i < n; i++) {
        PyObject *r, *v, *copy;
        if (i >= PySequence_Fast_GET_SIZE(vals)) {
            PyErr_SetString(PyExc_RuntimeError, "values changed size during the call");
            Py_CLEAR(list);
            break;
        }
        if ((r = record_at(seq, i)) == NULL) {
            Py_CLEAR(list);
            break;
        }
        if (paused && !plain_record(r)) {
            PyGC_Enable();
            paused = 0;
        }
        v = Py_NewRef(PySequence_Fast_GET_ITEM(vals, i));
        copy = copy_with(r, field, v);
        Py_DECREF(v);
        Py_DECREF(r);
        if (copy == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, copy);
    }
    if (paused) PyGC_Enable();
    if (list != NULL) PyObject_GC_Track(list);
done:
    Py_XDECREF(vals);
    Py_DECREF(seq);
    return list;
}

/* Packing str/bytes records into one buffer (Batch.from_list), in two calls so that the caller
 * allocates the buffer (from a memory pool whose pages are already mapped): packed_size() counts
 * the bytes, pack_into() writes them and the offsets. Neither allocates anything but the offsets
 * object nor runs Python code between reading an item and copying it: str are encoded to UTF-8
 * here, straight from their storage; and every copy is bounds-checked, so a list changed in
 * between (by another thread) is an error, never an overrun. */

/* UTF-8 size of a str, or -1 for a lone surrogate (which UTF-8 cannot encode). */
static Py_ssize_t utf8_size(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), i, size = 0;
    int kind = PyUnicode_KIND(s);
    const void *d = PyUnicode_DATA(s);
    if (PyUnicode_IS_ASCII(s)) return n;
    for (i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, d, i);
        if (c < 0x80) size += 1;
        else if (c < 0x800) size += 2;
        else if (c >= 0xD800 && c <= 0xDFFF) return -1;
        else if (c < 0x10000) size += 3;
        else size += 4;
    }
    return size;
}

static void utf8_write(PyObject *s, uint8_t *out) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), i;
    int kind = PyUnicode_KIND(s);
    const void *d = PyUnicode_DATA(s);
    if (PyUnicode_IS_ASCII(s)) {
        memcpy(out, d, (size_t)n);
        return;
    }
    for (i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, d, i);
        if (c < 0x80) {
            *out++ = (uint8_t)c;
        } else if (c < 0x800) {
            *out++ = (uint8_t)(0xC0 | c >> 6);
            *out++ = (uint8_t)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            *out++ = (uint8_t)(0xE0 | c >> 12);
            *out++ = (uint8_t)(0x80 | (c >> 6 & 0x3F));
            *out++ = (uint8_t)(0x80 | (c & 0x3F));
        } else {
            *out++ = (uint8_t)(0xF0 | c >> 18);
            *out++ = (uint8_t)(0x80 | (c >> 12 & 0x3F));
            *out++ = (uint8_t)(0x80 | (c >> 6 & 0x3F));
            *out++ = (uint8_t)(0x80 | (c & 0x3F));
        }
    }
}

/* The packed size of one item: 0 and *size set, 1 when it is not str/bytes/bytearray, -1 on a
 * lone surrogate (error set). */
static int item_size(PyObject *v, Py_ssize_t i, Py_ssize_t *size) {
    if (PyUnicode_Check(v)) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(v) < 0) return -1; /* legacy str objects */
#endif
        if ((*size = utf8_size(v)) < 0) { /* the UnicodeEncodeError would carry the text */
            PyErr_Format(VALUE_ERROR, "record %zd is str that UTF-8 cannot encode (a lone surrogate)",
                         i);
            return -1;
        }
        return 0;
    }
    if (PyBytes_Check(v)) *size = PyBytes_GET_SIZE(v);
    else if (PyByteArray_Check(v)) *size = PyByteArray_GET_SIZE(v);
    else return 1;
    return 0;
}

/* packed_size(values, with_none=False) -> int: total bytes of the records as UTF-8/bytes, or
 * None unless every value is str, bytes or bytearray (or None, when with_none). */
static PyObject *packed_size(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *values;
    Py_ssize_t n, i, total = 0, size;
    int with_none = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "packed_size(values, with_none=False)");
        return NULL;
    }
    values = args[0];
    if (nargs == 2 && (with_none = PyObject_IsTrue(args[1])) < 0) return NULL;
    if (!PyList_Check(values) && !PyTuple_Check(values)) Py_RETURN_NONE;
    n = PySequence_Fast_GET_SIZE(values);
    for (i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        int rc;
        if (with_none && v == Py_None) continue;
        rc = item_size(v, i, &size);
        if (rc < 0) return NULL;
        if (rc > 0) Py_RETURN_NONE;
        if (size > PY_SSIZE_T_MAX - total) {
            PyErr_SetString(PyExc_OverflowError, "the records are too large to pack");
            return NULL;
        }
        total += size;
    }
    return PyLong_FromSsize_t(total);
}

/* pack_into(values, out, none_mask=None) -> offsets (bytes holding n+1 int64): writes the
 * records one after the other into the writable buffer out, which packed_size(values) bytes fill
 * exactly. With none_mask (n writable bytes), a None value is an empty record and its byte is
 * set to 1 (0 for the others); without it, None is refused. */
static PyObject *pack_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *values, *offsets = NULL;
    Py_buffer out, mask;
    Py_ssize_t n, i, total = 0, size;
    int64_t *o;
    uint8_t *d, *m = NULL;
    mask.obj = NULL;
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "pack_into(values, out, none_mask=None)");
        return NULL;
    }
    values = args[0];
    if (!PyList_Check(values) && !PyTuple_Check(values)) {
        PyErr_Format(TYPE_ERROR, "values must be a list, not %.100s", Py_TYPE(values)->tp_name);
        return NULL;
    }
    if (get_view(args[1], &out, "out", PyBUF_WRITABLE) != 0) return NULL;
    n = PySequence_Fast_GET_SIZE(values);
    if (nargs == 3 && args[2] != Py_None) {
        if (get_view(args[2], &mask, "none_mask", PyBUF_WRITABLE) != 0) {
            mask.obj = NULL;
            goto done;
        }
        if (mask.len != n) {
            PyErr_SetString(VALUE_ERROR, "none_mask must hold one byte per value");
            goto done;
        }
        m = (uint8_t *)mask.buf;
    }
    /* bytes payloads are 8-byte aligned (allocator alignment 16, header 32 bytes) */
    offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(int64_t));
    if (offsets == NULL) goto done;
    /* nothing below runs Python code: the list and its items are as they are now */
    if (PySequence_Fast_GET_SIZE(values) != n) goto changed;
    o = (int64_t *)PyBytes_AS_STRING(offsets);
    d = (uint8_t *)out.buf;
    o[0] = 0;
    for (i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        int rc;
        if (m != NULL) {
            m[i] = v == Py_None;
            if (v == Py_None) {
                o[i + 1] = total;
                continue;
            }
        }
        rc = item_size(v, i, &size);
        if (rc < 0) goto fail;
        if (rc > 0) {
            PyErr_Format(TYPE_ERROR, "record %zd is a %.100s, not str or bytes", i,
                         Py_TYPE(v)->tp_name);
            goto fail;
        }
        if (size > out.len - total) goto changed;
        if (PyUnicode_Check(v)) utf8_write(v, d + total);
        else memcpy(d + total, PyBytes_Check(v) ? PyBytes_AS_STRING(v) : PyByteArray_AS_STRING(v),
                    (size_t)size);
        total += size;
        o[i + 1] = total;
    }
    if (total != out.len) goto changed;
    goto done;
changed:
    PyErr_SetString(PyExc_RuntimeError, "the records changed during the call");
fail:
    Py_CLEAR(offsets);
done:
    PyBuffer_Release(&out);
    if (mask.obj != NULL) PyBuffer_Release(&mask);
    return offsets;
}

/* What a list of values holds, as bits (exported as the module's *_VALUES constants). */
#define STR_VALUES 1
#define BYTES_VALUES 2 /* bytes, bytearray, memoryview */
#define NONE_VALUES 4
#define OTHER_VALUES 8

static PyObject *value_kinds(PyObject *self, PyObject *values) {
    Py_ssize_t i;
    long kinds = 0;
    if (!PyList_Check(values) && !PyTuple_Check(values)) {
        PyErr_Format(TYPE_ERROR, "values must be a list, not %.100s", Py_TYPE(values)->tp_name);
        return NULL;
    }
    const long all = STR_VALUES | BYTES_VALUES | NONE_VALUES | OTHER_VALUES;
    for (i = 0; i < PySequence_Fast_GET_SIZE(values) && kinds != all; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        if (PyUnicode_Check(v)) kinds |= STR_VALUES;
        else if (v == Py_None) kinds |= NONE_VALUES;
        else if (PyBytes_Check(v) || PyByteArray_Check(v) || PyMemoryView_Check(v))
            kinds |= BYTES_VALUES;
        else kinds |= OTHER_VALUES;
    }
    return PyLong_FromLong(kinds);
}

static PyMethodDef methods[] = {
    {"ascii_strings", ascii_strings, METH_VARARGS,
     "ascii_strings(data, offsets) -> list[str]: one str per record of an ASCII buffer."},
    {"field_values", field_values, METH_VARARGS,
     "field_values(records, field) -> list: each dict's value for field, None where absent."},
    {"with_field", with_field, METH_VARARGS,
     "with_field(records, field, values) -> list[dict]: copies with field set to values[i]."},
    {"packed_size", (PyCFunction)(void (*)(void))packed_size, METH_FASTCALL,
     "packed_size(values, with_none=False) -> int bytes, or None unless all are str/bytes."},
    {"pack_into", (PyCFunction)(void (*)(void))pack_into, METH_FASTCALL,
     "pack_into(values, out, none_mask=None) -> int64 offsets (bytes)."},
    {"value_kinds", value_kinds, METH_O,
     "value_kinds(values) -> int: bits STR_VALUES, BYTES_VALUES, NONE_VALUES, OTHER_VALUES."},
    {"seal", (PyCFunction)(void (*)(void))message_seal, METH_FASTCALL,
     "seal(key_address, nonce, data, associated_data=None) -> ciphertext || tag."},
    {"open", (PyCFunction)(void (*)(void))message_open, METH_FASTCALL,
     "open(key_address, nonce, ciphertext_and_tag, associated_data=None) -> plaintext."},
    {"set_errors", set_errors, METH_VARARGS,
     "set_errors(type_error, value_error, too_long, invalid_tag, check): exception classes."},
    {"seal_text_token", (PyCFunction)(void (*)(void))token_seal_text, METH_FASTCALL,
     "seal_text_token(key_address, header, data, aad, prefix) -> str: one text token."},
    {"token_header", (PyCFunction)(void (*)(void))token_header_of, METH_FASTCALL,
     "token_header(token, prefix, header_len) -> bytes, or None if not a text token."},
    {"open_text_token", (PyCFunction)(void (*)(void))token_open_text, METH_FASTCALL,
     "open_text_token(key_address, token, aad, prefix, header_len, bind_header, as_text)."},
    {"open_list", (PyCFunction)(void (*)(void))batch_open_list, METH_FASTCALL,
     "open_list(key_address, data, offsets, nonces, tags, aad, aad_offsets, threads) -> "
     "(list[bytes], failed bytes or None)."},
    {"bytes_layout", (PyCFunction)(void (*)(void))list_bytes_layout, METH_FASTCALL,
     "bytes_layout(values, min_average) -> int64 offsets of a list of bytes, or None."},
    {"seal_list", (PyCFunction)(void (*)(void))list_seal, METH_FASTCALL,
     "seal_list(key_address, values, offsets, out, nonces, fill_nonces, tags, aad, aad_offsets, "
     "aad_len, threads): seals each bytes object where it is."},
    {"set_core", set_core, METH_O,
     "set_core(addresses): the native core's function addresses, by name."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_objects", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__objects(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "STR_VALUES", STR_VALUES) < 0 ||
        PyModule_AddIntConstant(m, "BYTES_VALUES", BYTES_VALUES) < 0 ||
        PyModule_AddIntConstant(m, "NONE_VALUES", NONE_VALUES) < 0 ||
        PyModule_AddIntConstant(m, "OTHER_VALUES", OTHER_VALUES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
