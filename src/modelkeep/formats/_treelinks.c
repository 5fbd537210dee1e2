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
 * predictor_links(nodes, n, itemsize, off_left, off_right, off_feature, off_is_leaf,
 *                 off_is_categorical, off_bitset_idx, n_features, n_bitsets, categorical)
 *     -> (kind, value)
 *
 * The same for the nodes of a histogram gradient boosting ``TreePredictor``
 * (``PREDICTOR_RECORD_DTYPE``): a node is a leaf when its ``is_leaf`` byte is not 0 (so kind 1
 * cannot happen), ``left``/``right`` are native unsigned 32-bit integers, ``feature_idx`` a
 * native 64-bit integer, and two more faults come last (tree_links._check_predictor_numpy):
 *
 *   (6, i)  categorical split node i (``is_categorical`` byte not 0) has a ``bitset_idx``
 *           (unsigned 32-bit) of n_bitsets or more
 *   (7, i)  categorical split node i splits on a feature whose byte in ``categorical`` (a
 *           buffer, one byte a feature) is 0 or past its end; ``None`` skips this check
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
 * whole verified load. A histogram gradient boosting model is hundreds of small predictors,
 * each checked twice (at its BUILD and in the final pass): there the numpy checks' fixed cost
 * per array operation is what costs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { LINKS_OK = 0, LEAF_MISMATCH = 1, BAD_FEATURE = 2, BAD_LEFT = 3, BAD_RIGHT = 4, NOT_ONE_PARENT = 5 };
enum { BAD_BITSET = 6, NOT_CATEGORICAL = 7 }; /* TreePredictor nodes only */

/* Where the fields are in each record (offsets in bytes), and the bounds they are checked against. */
typedef struct {
    Py_ssize_t size, left, right, feature;
    Py_ssize_t is_leaf, is_categorical, bitset_idx; /* TreePredictor records only */
    int64_t n_features, n_bitsets;
    const unsigned char *categorical; /* one byte a feature, or NULL: no check */
    Py_ssize_t n_categorical;
} layout;

/* Fields read with memcpy: records need not be aligned. */
static inline int64_t
i64_at(const char *rec, Py_ssize_t offset)
{
    int64_t v;
    memcpy(&v, rec + offset, sizeof v);
    return v;
}

static inline int64_t
u32_at(const char *rec, Py_ssize_t offset)
{
    uint32_t v;
    memcpy(&v, rec + offset, sizeof v);
    return (int64_t)v;
}

/* Each node's work counter: its depth times 4 plus its number of parents so far (at most 2). */
#define PARENTS(w) ((w) & 3)
#define DEPTH(w) ((w) >> 2)

/* The one pass: the first faulty node of each kind, or the depth. ``work`` holds n zeroes.
 * ``predictor`` is a constant at each call, so each record layout gets its own loop. */
static inline int
scan(const char *base, Py_ssize_t n, const layout *lay, const int predictor, int64_t *work, Py_ssize_t *where)
{
    Py_ssize_t first[NOT_CATEGORICAL + 1] = {-1, -1, -1, -1, -1, -1, -1, -1};
    int64_t deepest = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *rec = base + i * lay->size;
        if (i > 0 && PARENTS(work[i]) != 1 && first[NOT_ONE_PARENT] < 0) {
            first[NOT_ONE_PARENT] = i; /* every parent in range comes before i */
        }
        int64_t l, r;
        if (predictor) {
            if (rec[lay->is_leaf] != 0) {
                continue;
            }
            l = u32_at(rec, lay->left);
            r = u32_at(rec, lay->right);
        } else {
            l = i64_at(rec, lay->left);
            r = i64_at(rec, lay->right);
            int leaf_l = l == -1, leaf_r = r == -1;
            if (leaf_l != leaf_r && first[LEAF_MISMATCH] < 0) {
                first[LEAF_MISMATCH] = i;
            }
            if (leaf_l) {
                continue;
            }
        }
        int64_t f = i64_at(rec, lay->feature);
        if ((f < 0 || f >= lay->n_features) && first[BAD_FEATURE] < 0) {
            first[BAD_FEATURE] = i;
        }
        if (predictor && rec[lay->is_categorical] != 0) {
            if (u32_at(rec, lay->bitset_idx) >= lay->n_bitsets && first[BAD_BITSET] < 0) {
                first[BAD_BITSET] = i;
            }
            if (lay->categorical != NULL && first[NOT_CATEGORICAL] < 0 &&
                (f < 0 || f >= (int64_t)lay->n_categorical || lay->categorical[f] == 0)) {
                first[NOT_CATEGORICAL] = i;
            }
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
    for (int kind = LEAF_MISMATCH; kind <= NOT_CATEGORICAL; kind++) {
        if (first[kind] >= 0) {
            *where = first[kind];
            return kind;
        }
    }
    *where = (Py_ssize_t)deepest;
    return LINKS_OK;
}

/* Whether a field of ``width`` bytes at ``offset`` lies inside a record of ``size`` bytes. */
static int
fits(Py_ssize_t offset, Py_ssize_t width, Py_ssize_t size)
{
    return offset >= 0 && offset <= size - width;
}

/* Checks the n records against the buffer, then runs the pass without the GIL. Releases ``view``. */
static PyObject *
run(Py_buffer *view, Py_ssize_t n, const layout *lay, int predictor, int fields_fit)
{
    if (n < 0 || lay->size < (Py_ssize_t)sizeof(int64_t) || n > view->len / lay->size || !fields_fit) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "links(): the records do not fit the buffer");
        return NULL;
    }
    int64_t *work = PyMem_RawCalloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
    if (work == NULL) {
        PyBuffer_Release(view);
        return PyErr_NoMemory();
    }
    const char *base = (const char *)view->buf;
    Py_ssize_t where = 0;
    int kind;
    Py_BEGIN_ALLOW_THREADS
    kind = predictor ? scan(base, n, lay, 1, work, &where) : scan(base, n, lay, 0, work, &where);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(work);
    PyBuffer_Release(view);
    return Py_BuildValue("(in)", kind, where);
}

static PyObject *
links(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view;
    Py_ssize_t n;
    long long n_features;
    layout lay = {0};
    if (!PyArg_ParseTuple(args, "y*nnnnnL", &view, &n, &lay.size, &lay.left, &lay.right, &lay.feature,
                          &n_features)) {
        return NULL;
    }
    lay.n_features = (int64_t)n_features;
    int ok = fits(lay.left, 8, lay.size) && fits(lay.right, 8, lay.size) && fits(lay.feature, 8, lay.size);
    return run(&view, n, &lay, 0, ok);
}

static PyObject *
predictor_links(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view, categorical = {0};
    Py_ssize_t n;
    long long n_features, n_bitsets;
    PyObject *mask;
    layout lay = {0};
    if (!PyArg_ParseTuple(args, "y*nnnnnnnnLLO", &view, &n, &lay.size, &lay.left, &lay.right, &lay.feature,
                          &lay.is_leaf, &lay.is_categorical, &lay.bitset_idx, &n_features, &n_bitsets, &mask)) {
        return NULL;
    }
    if (mask != Py_None) {
        if (PyObject_GetBuffer(mask, &categorical, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        lay.categorical = (const unsigned char *)categorical.buf;
        lay.n_categorical = categorical.len;
    }
    lay.n_features = (int64_t)n_features;
    lay.n_bitsets = (int64_t)n_bitsets;
    int ok = fits(lay.left, 4, lay.size) && fits(lay.right, 4, lay.size) && fits(lay.feature, 8, lay.size) &&
             fits(lay.is_leaf, 1, lay.size) && fits(lay.is_categorical, 1, lay.size) &&
             fits(lay.bitset_idx, 4, lay.size);
    PyObject *answer = run(&view, n, &lay, 1, ok);
    if (mask != Py_None) {
        PyBuffer_Release(&categorical);
    }
    return answer;
}

static PyMethodDef methods[] = {
    {"links", links, METH_VARARGS,
     "links(nodes, n, itemsize, off_left, off_right, off_feature, n_features) -> (kind, value)\n\n"
     "Check the child links and features of the n records of a decision tree's node buffer:\n"
     "(0, depth) for a proper tree, else (kind, node) of the first fault (see _treelinks.c)."},
    {"predictor_links", predictor_links, METH_VARARGS,
     "predictor_links(nodes, n, itemsize, off_left, off_right, off_feature, off_is_leaf,\n"
     "                off_is_categorical, off_bitset_idx, n_features, n_bitsets, categorical)\n"
     "    -> (kind, value)\n\n"
     "The same check for the n records of a histogram gradient boosting TreePredictor's nodes,\n"
     "with categorical splits on bitset rows below n_bitsets and on features marked in the\n"
     "bytes of categorical (unless None) (see _treelinks.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef treelinks_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_treelinks",
    .m_doc = "The node links of scikit-learn decision trees and HGB predictors, checked in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__treelinks(void)
{
    return PyModule_Create(&treelinks_module);
}
