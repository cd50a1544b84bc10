/* engine._native._objects: the few loops over Python objects that the batch paths cannot avoid,
 * done in C. The cffi module moves bytes; this one builds and reads Python objects in bulk:
 *   - ascii_strings(buffer, offsets): one str per record of an ASCII buffer (text tokens);
 *   - field_values(records, field): record.get(field) for a list of dicts;
 *   - with_field(records, field, values): new dicts, each a copy of records[i] with
 *     field = values[i] (a None value for a record without the field leaves it absent);
 *   - value_kinds(values): which kinds of value (str, bytes, None, other) a list holds;
 *   - pack(values): str/bytes records into one buffer plus int64 offsets (Batch.from_list);
 *   - seal/open (messages.c): one message, AESGCM-style, into a bytes object made here.
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

/* set_core(seal, open): addresses of engine_seal and engine_open in the cffi module. */
static PyObject *set_core(PyObject *self, PyObject *args) {
    PyObject *seal, *open;
    void *ps, *po;
    if (!PyArg_ParseTuple(args, "OO:set_core", &seal, &open)) return NULL;
    ps = PyLong_AsVoidPtr(seal);
    po = PyLong_AsVoidPtr(open);
    if (PyErr_Occurred()) return NULL;
    if (ps == NULL || po == NULL) {
        PyErr_SetString(PyExc_ValueError, "set_core needs the core's function addresses");
        return NULL;
    }
    g_core.seal = (int (*)(const engine_key *, uint8_t *, uint8_t *, const uint8_t *, uint64_t,
                           const uint8_t *, size_t, const uint8_t *, uint64_t))ps;
    g_core.open = (int (*)(const engine_key *, uint8_t *, const uint8_t *, uint64_t,
                           const uint8_t *, const uint8_t *, size_t, const uint8_t *, uint64_t))po;
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
            PyErr_Clear();
            PyErr_Format(VALUE_ERROR, "%s must be a C-contiguous buffer", what);
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

/* pack(values) -> (data, offsets) as bytes, or None. Records are str (as UTF-8) or bytes or
 * bytearray; anything else (memoryview, numpy arrays, None) gets None, for the caller's general
 * path. ASCII str are copied straight from their storage; other str are encoded once. Nothing
 * between the two passes runs Python code or allocates a container (which could start a
 * collection, and so a gc callback), so the list cannot change under them. */
static PyObject *pack(PyObject *self, PyObject *values) {
    PyObject *offsets = NULL, *data = NULL, *result = NULL, **utf8 = NULL;
    Py_ssize_t n, i, total = 0;
    int64_t *o;
    char *d;
    if (!PyList_Check(values) && !PyTuple_Check(values)) Py_RETURN_NONE;
    n = PySequence_Fast_GET_SIZE(values);
    for (i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        if (!PyUnicode_Check(v) && !PyBytes_Check(v) && !PyByteArray_Check(v)) Py_RETURN_NONE;
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_Check(v) && PyUnicode_READY(v) < 0) return NULL; /* legacy str objects */
#endif
    }
    /* bytes payloads are 8-byte aligned (allocator alignment 16, header 32 bytes) */
    offsets = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(int64_t));
    if (offsets == NULL) return NULL;
    o = (int64_t *)PyBytes_AS_STRING(offsets);
    o[0] = 0;
    for (i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        Py_ssize_t len;
        if (PyUnicode_Check(v)) {
            if (PyUnicode_IS_ASCII(v)) {
                len = PyUnicode_GET_LENGTH(v);
            } else {
                PyObject *b = PyUnicode_AsUTF8String(v);
                if (b == NULL) { /* a lone surrogate: the UnicodeEncodeError would carry the text */
                    if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                        PyErr_Clear();
                        PyErr_Format(VALUE_ERROR,
                                     "record %zd is str that UTF-8 cannot encode (a lone surrogate)", i);
                    }
                    goto done;
                }
                if (utf8 == NULL && (utf8 = PyMem_Calloc((size_t)n, sizeof(PyObject *))) == NULL) {
                    Py_DECREF(b);
                    PyErr_NoMemory();
                    goto done;
                }
                utf8[i] = b;
                len = PyBytes_GET_SIZE(b);
            }
        } else {
            len = PyBytes_Check(v) ? PyBytes_GET_SIZE(v) : PyByteArray_GET_SIZE(v);
        }
        if (len > PY_SSIZE_T_MAX - total) {
            PyErr_SetString(PyExc_OverflowError, "the records are too large to pack");
            goto done;
        }
        total += len;
        o[i + 1] = total;
    }
    data = PyBytes_FromStringAndSize(NULL, total);
    if (data == NULL) goto done;
    d = PyBytes_AS_STRING(data);
    for (i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(values, i);
        const char *src;
        if (utf8 != NULL && utf8[i] != NULL) src = PyBytes_AS_STRING(utf8[i]);
        else if (PyUnicode_Check(v)) src = (const char *)PyUnicode_DATA(v);
        else if (PyBytes_Check(v)) src = PyBytes_AS_STRING(v);
        else src = PyByteArray_AS_STRING(v);
        memcpy(d + o[i], src, (size_t)(o[i + 1] - o[i]));
    }
    result = PyTuple_Pack(2, data, offsets);
done:
    if (utf8 != NULL) {
        for (i = 0; i < n; i++) Py_XDECREF(utf8[i]);
        PyMem_Free(utf8);
    }
    Py_XDECREF(data);
    Py_XDECREF(offsets);
    return result;
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
    {"pack", pack, METH_O,
     "pack(values) -> (data, offsets) bytes, or None unless all are str, bytes or bytearray."},
    {"value_kinds", value_kinds, METH_O,
     "value_kinds(values) -> int: bits STR_VALUES, BYTES_VALUES, NONE_VALUES, OTHER_VALUES."},
    {"seal", (PyCFunction)(void (*)(void))message_seal, METH_FASTCALL,
     "seal(key_address, nonce, data, associated_data=None) -> ciphertext || tag."},
    {"open", (PyCFunction)(void (*)(void))message_open, METH_FASTCALL,
     "open(key_address, nonce, ciphertext_and_tag, associated_data=None) -> plaintext."},
    {"set_errors", set_errors, METH_VARARGS,
     "set_errors(type_error, value_error, too_long, invalid_tag, check): exception classes."},
    {"set_core", set_core, METH_VARARGS,
     "set_core(seal, open): addresses of the native core's single-message functions."},
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
