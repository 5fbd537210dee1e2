/* The node links of a scikit-learn decision tree checked in C (formats/tree_links.py).
 *
 * links(nodes, n, itemsize, off_left, off_right, off_feature, n_features) -> (kind, value)
 *
 * ``nodes`` is a C-contiguous buffer of ``n`` records of ``itemsize`` bytes (a ``NODE_DTYPE``
 * array); ``left_child``, ``right_child`` and ``feature`` are native 64-bit integers at the
 * given offsets of each record. The answer is ``(0, depth)`` for a proper tree, else the first
 * fault, in the order tree_links._check_numpy looks for them (so both give the same answer;
 * tests/test_tree_links.py compares them):
 *
 *   (1, i)  node i has one child TREE_LEAF (-1) and the other not
 *   (2, i)  split node i has a feature outside 0..n_features-1
 *   (3, i)  split node i has a left child outside i+1..n-1
 *   (4, i)  split node i has a right child outside i+1..n-1 (no left child is)
 *   (5, i)  node i >= 1 is not the child of exactly one node
 *
 * Children after their parent and one parent each make the nodes one tree rooted at node 0
 * (no cycle: a walk ends). All of it is one pass in index order, reading each record once (a
 * large tree does not fit the CPU caches: the records are what costs). Every parent of a node
 * comes before it, so when the pass reaches node i its count of parents and its depth are
 * final; a fault of an earlier kind anywhere still wins, as in the numpy check.
 *
 * Hostile input: every offset and length is checked against the buffer before the GIL is
 * released, every child index is checked against ``n`` before it indexes the work array (so
 * even a buffer changed by another thread meanwhile is never read or written out of bounds),
 * there is no recursion, and the work array is one allocation of ``n`` counters.
 *
 * Why C: a large forest is a hundred trees of tens of thousands of nodes; the same checks in
 * numpy are some twenty array operations and three field copies per tree, a third of the
 * whole verified load.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { LINKS_OK = 0, LEAF_MISMATCH = 1, BAD_FEATURE = 2, BAD_LEFT = 3, BAD_RIGHT = 4, NOT_ONE_PARENT = 5 };

static inline int64_t
field(const char *base, Py_ssize_t i, Py_ssize_t itemsize, Py_ssize_t offset)
{
    int64_t v;
    memcpy(&v, base + i * itemsize + offset, sizeof v); /* records need not be aligned */
    return v;
}

/* Each node's work counter: its depth times 4 plus its number of parents so far (at most 2). */
#define PARENTS(w) ((w) & 3)
#define DEPTH(w) ((w) >> 2)

/* The one pass: the first faulty node of each kind, or the depth. ``work`` holds n zeroes. */
static int
scan(const char *base, Py_ssize_t n, Py_ssize_t size, Py_ssize_t ol, Py_ssize_t orr, Py_ssize_t of,
     int64_t n_features, int64_t *work, Py_ssize_t *where)
{
    Py_ssize_t first[NOT_ONE_PARENT + 1] = {-1, -1, -1, -1, -1, -1};
    int64_t deepest = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i > 0 && PARENTS(work[i]) != 1 && first[NOT_ONE_PARENT] < 0) {
            first[NOT_ONE_PARENT] = i; /* every parent in range comes before i */
        }
        int64_t l = field(base, i, size, ol), r = field(base, i, size, orr);
        int leaf_l = l == -1, leaf_r = r == -1;
        if (leaf_l != leaf_r && first[LEAF_MISMATCH] < 0) {
            first[LEAF_MISMATCH] = i;
        }
        if (leaf_l) {
            continue;
        }
        int64_t f = field(base, i, size, of);
        if ((f < 0 || f >= n_features) && first[BAD_FEATURE] < 0) {
            first[BAD_FEATURE] = i;
        }
        int64_t below = (DEPTH(work[i]) + 1) << 2;
        if (l <= (int64_t)i || l >= (int64_t)n) {
            if (first[BAD_LEFT] < 0) {
                first[BAD_LEFT] = i;
            }
        } else {
            work[l] = below | (PARENTS(work[l]) + (PARENTS(work[l]) < 2));
        }
        if (r <= (int64_t)i || r >= (int64_t)n) {
            if (first[BAD_RIGHT] < 0) {
                first[BAD_RIGHT] = i;
            }
        } else {
            work[r] = below | (PARENTS(work[r]) + (PARENTS(work[r]) < 2));
        }
        if (DEPTH(below) > deepest) {
            deepest = DEPTH(below);
        }
    }
    for (int kind = LEAF_MISMATCH; kind <= NOT_ONE_PARENT; kind++) {
        if (first[kind] >= 0) {
            *where = first[kind];
            return kind;
        }
    }
    *where = (Py_ssize_t)deepest;
    return LINKS_OK;
}

static PyObject *
links(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t n, size, ol, orr, of;
    long long n_features;
    if (!PyArg_ParseTuple(args, "y*nnnnnL", &view, &n, &size, &ol, &orr, &of, &n_features)) {
        return NULL;
    }
    if (n < 0 || size < (Py_ssize_t)sizeof(int64_t) || n > view.len / size || ol < 0 || orr < 0 || of < 0 ||
        ol > size - (Py_ssize_t)sizeof(int64_t) || orr > size - (Py_ssize_t)sizeof(int64_t) ||
        of > size - (Py_ssize_t)sizeof(int64_t)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "links(): the records do not fit the buffer");
        return NULL;
    }
    int64_t *work = PyMem_RawCalloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
    if (work == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    const char *base = (const char *)view.buf;
    Py_ssize_t where = 0;
    int kind;
    Py_BEGIN_ALLOW_THREADS
    kind = scan(base, n, size, ol, orr, of, (int64_t)n_features, work, &where);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(work);
    PyBuffer_Release(&view);
    return Py_BuildValue("(in)", kind, where);
}

static PyMethodDef methods[] = {
    {"links", links, METH_VARARGS,
     "links(nodes, n, itemsize, off_left, off_right, off_feature, n_features) -> (kind, value)\n\n"
     "Check the child links and features of the n records of a decision tree's node buffer:\n"
     "(0, depth) for a proper tree, else (kind, node) of the first fault (see _treelinks.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef treelinks_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_treelinks",
    .m_doc = "The node links of a scikit-learn decision tree, checked in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__treelinks(void)
{
    return PyModule_Create(&treelinks_module);
}
