/* engine._native._objects: the few loops over Python objects that the batch paths cannot avoid,
 * done in C. The cffi module moves bytes; this one builds and reads Python objects in bulk:
 *   - ascii_strings(buffer, offsets): one str per record of an ASCII buffer (text tokens);
 *   - field_values(records, field): record.get(field) for a list of dicts;
 *   - with_field(records, field, values): new dicts, each a copy of records[i] with
 *     field = values[i] (a None value for a record without the field leaves it absent).
 *     The cyclic collector is paused for the loop: the new dicts are reachable from the new
 *     list and form no cycle of their own, and a collection every 700 dicts would only
 *     re-traverse them (measured: 20-25 % of the loop on 1M records).
 * Python code can run inside these loops (a key's __hash__/__eq__, a dict subclass's keys(), a
 * gc callback), so result lists stay untracked until filled, every item is re-read and held
 * while in use, and buffers are checked after the last allocation that can run a collection.
 * No key, plaintext or token appears in an error message. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* A read-only contiguous view of obj (bytes, bytearray, memoryview, numpy array). */
static int get_view(PyObject *obj, Py_buffer *view, const char *what, int flags) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | flags) != 0) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError)) return -1;
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous buffer, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
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
        PyErr_SetString(PyExc_ValueError, "offsets must be n+1 aligned int64 values (1-D)");
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
            PyErr_SetString(PyExc_ValueError, "offsets must be non-decreasing and within data");
            Py_CLEAR(list);
            goto done;
        }
    }
    if (n > 0) {
        uint8_t high = 0;
        Py_ssize_t k;
        for (k = (Py_ssize_t)o[0]; k < (Py_ssize_t)o[n]; k++) high |= bytes[k];
        if (high & 0x80) {
            PyErr_SetString(PyExc_ValueError, "records must be ASCII");
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

/* The records as a list or tuple (a new reference to a sequence whose items are all dicts). */
static PyObject *dict_records(PyObject *records) {
    PyObject *seq = PySequence_Fast(records, "records must be a list of dicts");
    Py_ssize_t i, n;
    if (seq == NULL) return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        PyObject *r = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyDict_Check(r)) {
            PyErr_Format(PyExc_TypeError, "record %zd is a %.100s, not a dict", i,
                         Py_TYPE(r)->tp_name);
            Py_DECREF(seq);
            return NULL;
        }
    }
    return seq;
}

/* seq[i] as a new reference, re-checked: Python code run by the loop (a key's __hash__/__eq__,
 * a dict subclass's keys()/__getitem__) may have shrunk the list or replaced its items. */
static PyObject *record_at(PyObject *seq, Py_ssize_t i) {
    PyObject *r;
    if (i >= PySequence_Fast_GET_SIZE(seq)) {
        PyErr_SetString(PyExc_RuntimeError, "records changed size during the call");
        return NULL;
    }
    r = PySequence_Fast_GET_ITEM(seq, i);
    if (!PyDict_Check(r)) {
        PyErr_Format(PyExc_TypeError, "record %zd is a %.100s, not a dict", i, Py_TYPE(r)->tp_name);
        return NULL;
    }
    Py_INCREF(r);
    return r;
}

static PyObject *field_values(PyObject *self, PyObject *args) {
    PyObject *records, *field, *seq, *list;
    Py_ssize_t i, n;
    if (!PyArg_ParseTuple(args, "OO:field_values", &records, &field)) return NULL;
    if ((seq = dict_records(records)) == NULL) return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    list = PyList_New(n);
    if (list != NULL) PyObject_GC_UnTrack(list); /* NULL slots: keep it out of gc.get_objects() */
    for (i = 0; list != NULL && i < n; i++) {
        PyObject *r = record_at(seq, i), *v;
        if (r == NULL) {
            Py_CLEAR(list);
            break;
        }
        v = PyDict_GetItemWithError(r, field);
        Py_XINCREF(v);
        Py_DECREF(r);
        if (v == NULL) {
            if (PyErr_Occurred()) {
                Py_CLEAR(list);
                break;
            }
            v = Py_NewRef(Py_None);
        }
        PyList_SET_ITEM(list, i, v);
    }
    if (list != NULL) PyObject_GC_Track(list);
    Py_DECREF(seq);
    return list;
}

static PyObject *with_field(PyObject *self, PyObject *args) {
    PyObject *records, *field, *values, *seq, *vals, *list = NULL;
    Py_ssize_t i, n;
    int gc_was_enabled;
    if (!PyArg_ParseTuple(args, "OOO:with_field", &records, &field, &values)) return NULL;
    if ((seq = dict_records(records)) == NULL) return NULL;
    vals = PySequence_Fast(values, "values must be a list");
    if (vals == NULL) goto done;
    n = PySequence_Fast_GET_SIZE(seq);
    if (PySequence_Fast_GET_SIZE(vals) != n) {
        PyErr_SetString(PyExc_ValueError, "values must have one item per record");
        goto done;
    }
    list = PyList_New(n);
    if (list != NULL) PyObject_GC_UnTrack(list); /* NULL slots: keep it out of gc.get_objects() */
    gc_was_enabled = PyGC_Disable();
    for (i = 0; list != NULL && i < n; i++) {
        PyObject *r, *v, *copy;
        int keep_absent = 0, err = 0;
        if (i >= PySequence_Fast_GET_SIZE(vals)) {
            PyErr_SetString(PyExc_RuntimeError, "values changed size during the call");
            Py_CLEAR(list);
            break;
        }
        if ((r = record_at(seq, i)) == NULL) {
            Py_CLEAR(list);
            break;
        }
        v = Py_NewRef(PySequence_Fast_GET_ITEM(vals, i));
        copy = PyDict_Copy(r);
        if (copy == NULL) {
            err = 1;
        } else {
            PyList_SET_ITEM(list, i, copy);
            if (v == Py_None) {
                int has = PyDict_Contains(r, field);
                if (has < 0) err = 1;
                keep_absent = has == 0;
            }
            if (!err && !keep_absent && PyDict_SetItem(copy, field, v) != 0) err = 1;
        }
        Py_DECREF(v);
        Py_DECREF(r);
        if (err) Py_CLEAR(list);
    }
    if (gc_was_enabled) PyGC_Enable();
    if (list != NULL) PyObject_GC_Track(list);
done:
    Py_XDECREF(vals);
    Py_DECREF(seq);
    return list;
}

static PyMethodDef methods[] = {
    {"ascii_strings", ascii_strings, METH_VARARGS,
     "ascii_strings(data, offsets) -> list[str]: one str per record of an ASCII buffer."},
    {"field_values", field_values, METH_VARARGS,
     "field_values(records, field) -> list: each dict's value for field, None where absent."},
    {"with_field", with_field, METH_VARARGS,
     "with_field(records, field, values) -> list[dict]: copies with field set to values[i]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_objects", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__objects(void) { return PyModule_Create(&module); }
