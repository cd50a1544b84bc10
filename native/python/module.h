/* Shared by the C files of engine._native._objects: the engine's exception classes (given once by
 * engine._native through set_errors) and the native core's entry points (given once through
 * set_core: the core is linked into the cffi module only, so there is one copy of its state, its
 * CSPRNG pool among it). */
#ifndef ENGINE_OBJECTS_MODULE_H
#define ENGINE_OBJECTS_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "engine_aead.h"

/* InvalidArgumentType, InvalidArgument, MessageTooLong, InvalidTag; and engine._native._check,
 * called with a negative result code of the core to raise the matching exception. */
extern PyObject *g_type_error, *g_value_error, *g_too_long, *g_invalid_tag, *g_check;

#define TYPE_ERROR (g_type_error ? g_type_error : PyExc_TypeError)
#define VALUE_ERROR (g_value_error ? g_value_error : PyExc_ValueError)

/* The core's entry points this module calls, with the types of native/include/engine_aead.h. */
typedef struct core_api {
    __typeof__(&engine_seal) seal;
    __typeof__(&engine_open) open;
    __typeof__(&engine_open_batch_each) open_batch_each;
    __typeof__(&engine_seal_batch_each) seal_batch_each;
    __typeof__(&engine_seal_tokens) seal_tokens;
    __typeof__(&engine_open_tokens) open_tokens;
    __typeof__(&engine_b64url_encode_batch) b64url_encode;
    __typeof__(&engine_b64url_decode_batch) b64url_decode;
    __typeof__(&engine_key_algorithm) key_algorithm;
} core_api;

extern core_api g_core;

/* Raises the exception for a core result code (< 0) through engine._native._check; NULL. */
PyObject *raise_code(int rc);

/* A read-only C-contiguous view of obj; on failure a typed error naming `what`. */
int get_view(PyObject *obj, Py_buffer *view, const char *what, int flags);

/* get_view for an argument that may be None: *have says whether a view was taken. */
int get_optional_view(PyObject *obj, Py_buffer *view, const char *what, int flags, int *have);

/* Zeroes n bytes in a way the compiler cannot drop (plaintext left in scratch buffers). */
static inline void wipe(void *p, size_t n) {
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) *v++ = 0;
}

PyObject *message_seal(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *message_open(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *token_seal_text(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *token_header_of(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *token_open_text(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *batch_open_list(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *list_bytes_layout(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *list_seal(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
