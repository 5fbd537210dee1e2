/* The stat signatures of lineage._GitSnapshot in C: one call, the GIL released for every lstat.
 *
 * signatures(paths) -> bytes
 *
 * ``paths`` is a tuple of bytes (file system paths). For each, in order, five native-endian
 * unsigned 64-bit numbers: st_ino, st_size, st_mtime_ns, st_ctime_ns, st_mode of its lstat, or
 * five times 2**64 - 1 when lstat fails (a missing path). lineage._pack builds the same bytes
 * from os.lstat's results (negative numbers taken modulo 2**64), so a kept snapshot is still
 * valid exactly when this returns the bytes it was packed into; tests/test_statscan.py compares
 * the two.
 *
 * Why C: a save checks the ``stat`` of every tracked file of the repository it runs in (a few
 * hundred), on a helper thread while the model's file is fsync'ed. In Python each os.lstat
 * takes the GIL back after its system call, so the check fights the save's own thread for the
 * GIL; here the loop runs with the GIL released, and costs only the system calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef _WIN32
#include <sys/stat.h>

#if defined(__APPLE__)
#define MTIME_SEC(st) ((st).st_mtimespec.tv_sec)
#define MTIME_NSEC(st) ((st).st_mtimespec.tv_nsec)
#define CTIME_SEC(st) ((st).st_ctimespec.tv_sec)
#define CTIME_NSEC(st) ((st).st_ctimespec.tv_nsec)
#else
#define MTIME_SEC(st) ((st).st_mtim.tv_sec)
#define MTIME_NSEC(st) ((st).st_mtim.tv_nsec)
#define CTIME_SEC(st) ((st).st_ctim.tv_sec)
#define CTIME_NSEC(st) ((st).st_ctim.tv_nsec)
#endif

#define FIELDS 5

static PyObject *
signatures(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyTuple_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "signatures() takes a tuple of bytes");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(arg);
    const char **names = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(char *));
    if (names == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(arg, i);
        if (!PyBytes_Check(item) || (Py_ssize_t)strlen(PyBytes_AS_STRING(item)) != PyBytes_GET_SIZE(item)) {
            PyMem_Free(names);
            PyErr_SetString(PyExc_TypeError, "signatures() takes a tuple of bytes without NUL");
            return NULL;
        }
        names[i] = PyBytes_AS_STRING(item);  /* the tuple holds the bytes while the GIL is released */
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * FIELDS * (Py_ssize_t)sizeof(uint64_t));
    if (out == NULL) {
        PyMem_Free(names);
        return NULL;
    }
    uint64_t *sig = (uint64_t *)PyBytes_AS_STRING(out);  /* not shared until returned */
    Py_BEGIN_ALLOW_THREADS
    struct stat st;
    for (Py_ssize_t i = 0; i < n; i++, sig += FIELDS) {
        if (lstat(names[i], &st) != 0) {
            memset(sig, 0xff, FIELDS * sizeof(uint64_t));
            continue;
        }
        sig[0] = (uint64_t)st.st_ino;
        sig[1] = (uint64_t)(int64_t)st.st_size;
        sig[2] = (uint64_t)((int64_t)MTIME_SEC(st) * 1000000000 + (int64_t)MTIME_NSEC(st));
        sig[3] = (uint64_t)((int64_t)CTIME_SEC(st) * 1000000000 + (int64_t)CTIME_NSEC(st));
        sig[4] = (uint64_t)st.st_mode;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(names);
    return out;
}

static PyMethodDef methods[] = {
    {"signatures", signatures, METH_O,
     "signatures(paths) -> bytes\n\n"
     "For each path of the tuple of bytes ``paths``: st_ino, st_size, st_mtime_ns, st_ctime_ns and\n"
     "st_mode of its lstat as five native unsigned 64-bit numbers (all ones when lstat fails),\n"
     "read with the GIL released. lineage._pack gives the same bytes from os.lstat."},
    {NULL, NULL, 0, NULL},
};
#else
static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};
#endif

static struct PyModuleDef statscan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_statscan",
    .m_doc = "The stat signatures of modelkeep.lineage's kept git status, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__statscan(void)
{
    return PyModule_Create(&statscan_module);
}
