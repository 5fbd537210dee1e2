/* The pre-scan of formats/_fastpath.py in C: the same proof as ``_fastpath._walk``.
 *
 * walk(buffer, fast_depth, max_depth, max_stack, max_loaded_objects) -> True | False | None
 *
 * True / False: what ``_walk`` returns; None: where ``_walk`` raises IndexError (an opcode or
 * argument past the end, an empty stack or mark list), which ``prove_plain`` turns into
 * ``None`` (partial) or ``False``. The limits are passed in by the caller so they are set in
 * one place (formats/_fastpath.py, formats/_restricted.py, formats/state_checks.py).
 *
 * The input is hostile: every byte read is bounds-checked, positions are size_t and never
 * move more than 9 bytes past the end (a length is compared to the bytes left before it is
 * added), counts are checked before they grow, and the arrays grow with checked reallocs.
 * No recursion. The GIL is released during the walk (the buffer is held, so it cannot be
 * resized or closed; memory comes from PyMem_Raw*).
 *
 * Kept opcode for opcode in step with _walk; tests/test_plainscan.py compares the two on
 * generated, mutated, truncated and crafted streams.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { R_FALSE = 0, R_TRUE = 1, R_INDEX = 2, R_NOMEM = 3 };

typedef struct {
    int64_t *items;
    size_t len;
    size_t cap;
} i64vec;

typedef struct {
    unsigned char *items;
    size_t len;
    size_t cap;
} u8vec;

static int
i64_reserve(i64vec *v)
{
    if (v->len < v->cap)
        return 0;
    size_t cap = v->cap ? v->cap : 64;
    if (cap > ((size_t)PY_SSIZE_T_MAX / sizeof(int64_t)) / 2)
        return -1;
    cap *= 2;
    int64_t *items = PyMem_RawRealloc(v->items, cap * sizeof(int64_t));
    if (items == NULL)
        return -1;
    v->items = items;
    v->cap = cap;
    return 0;
}

static int
u8_reserve(u8vec *v)
{
    if (v->len < v->cap)
        return 0;
    size_t cap = v->cap ? v->cap : 64;
    if (cap > (size_t)PY_SSIZE_T_MAX / 2)
        return -1;
    cap *= 2;
    unsigned char *items = PyMem_RawRealloc(v->items, cap);
    if (items == NULL)
        return -1;
    v->items = items;
    v->cap = cap;
    return 0;
}

/* int.from_bytes(data[pos:pos + width], "little"): a slice past the end is short, not an error */
static uint64_t
read_le(const unsigned char *data, size_t end, size_t pos, size_t width)
{
    uint64_t value = 0;
    for (size_t i = 0; i < width && pos < end && i < end - pos; i++)
        value |= (uint64_t)data[pos + i] << (8 * i);
    return value;
}

#define PUSH(value)                         \
    do {                                    \
        if (i64_reserve(&stack) < 0) {      \
            result = R_NOMEM;               \
            goto done;                      \
        }                                   \
        stack.items[stack.len++] = (value); \
    } while (0)

#define REMEMBER(flag)                     \
    do {                                   \
        if (u8_reserve(&memo) < 0) {       \
            result = R_NOMEM;              \
            goto done;                     \
        }                                  \
        memo.items[memo.len++] = (flag);   \
    } while (0)

#define NEED(n)                            \
    do {                                   \
        if (stack.len < (size_t)(n)) {     \
            result = R_INDEX;              \
            goto done;                     \
        }                                  \
    } while (0)

#define TOP (stack.items[stack.len - 1])

static int
scan(const unsigned char *data, size_t end, int64_t fast_depth, size_t max_depth, size_t max_stack,
     uint64_t max_objects)
{
    i64vec stack = {NULL, 0, 0};
    size_t *marks = NULL; /* at most max_depth of them: allocated as they come */
    size_t nmarks = 0, capmarks = 0;
    u8vec memo = {NULL, 0, 0}; /* whether each memo entry is a container (depth > 0) */
    size_t pos = 0;
    uint64_t objects = 0;
    int result = R_FALSE;

    for (;;) {
        if (pos >= end) {
            result = R_INDEX;
            goto done;
        }
        unsigned char op = data[pos++];
        switch (op) {
        /* scalar pushes: the argument is skipped; a short one fails at the next opcode */
        case 'N': /* NONE */
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
        case ')': /* EMPTY_TUPLE */
            PUSH(0);
            break;
        case 'J': /* BININT */
            pos += 4;
            PUSH(0);
            break;
        case 'K': /* BININT1 */
            pos += 1;
            PUSH(0);
            break;
        case 'M': /* BININT2 */
            pos += 2;
            PUSH(0);
            break;
        case 'G': /* BINFLOAT */
            pos += 8;
            PUSH(0);
            break;
        case 0x94: /* MEMOIZE */
            NEED(1);
            REMEMBER(TOP != 0);
            break;
        case 0x8c: /* SHORT_BINUNICODE */
        case 'C': /* SHORT_BINBYTES */
        case 0x8a: /* LONG1 */
            if (pos >= end) {
                result = R_INDEX;
                goto done;
            }
            pos += 1 + (size_t)data[pos];
            PUSH(0);
            break;
        case 0x87: { /* TUPLE3 */
            NEED(3);
            int64_t a = stack.items[stack.len - 1], b = stack.items[stack.len - 2], c = stack.items[stack.len - 3];
            stack.len -= 2;
            objects++;
            int64_t depth = (a > b ? a : b);
            depth = (depth > c ? depth : c) + 1;
            if (depth > fast_depth)
                goto refuse;
            TOP = depth;
            break;
        }
        case 0x86: { /* TUPLE2 */
            NEED(2);
            int64_t a = stack.items[stack.len - 1], b = stack.items[stack.len - 2];
            stack.len -= 1;
            objects++;
            int64_t depth = (a > b ? a : b) + 1;
            if (depth > fast_depth)
                goto refuse;
            TOP = depth;
            break;
        }
        case 0x85: { /* TUPLE1 */
            NEED(1);
            objects++;
            int64_t depth = TOP + 1;
            if (depth > fast_depth)
                goto refuse;
            TOP = depth;
            break;
        }
        case '(': /* MARK */
            if (nmarks >= max_depth || stack.len >= max_stack)
                goto refuse;
            if (nmarks == capmarks) {
                size_t cap = capmarks ? capmarks * 2 : 64;
                if (cap > max_depth)
                    cap = max_depth; /* nmarks < max_depth here, so cap > nmarks */
                if (cap > (size_t)PY_SSIZE_T_MAX / sizeof(size_t)) {
                    result = R_NOMEM;
                    goto done;
                }
                size_t *grown = PyMem_RawRealloc(marks, cap * sizeof(size_t));
                if (grown == NULL) {
                    result = R_NOMEM;
                    goto done;
                }
                marks = grown;
                capmarks = cap;
            }
            marks[nmarks++] = stack.len;
            break;
        case 'e': /* APPENDS */
        case 'u': /* SETITEMS */
        case 0x90: { /* ADDITEMS */
            if (nmarks == 0) {
                result = R_INDEX;
                goto done;
            }
            size_t start = marks[--nmarks];
            if (start < 1)
                goto refuse; /* no container below the mark */
            if (start < stack.len) {
                int64_t depth = stack.items[start];
                for (size_t i = start + 1; i < stack.len; i++)
                    if (stack.items[i] > depth)
                        depth = stack.items[i];
                depth += 1;
                stack.len = start;
                if (depth > TOP) {
                    if (depth > fast_depth)
                        goto refuse;
                    TOP = depth;
                }
            }
            break;
        }
        case '}': /* EMPTY_DICT */
        case ']': /* EMPTY_LIST */
        case 0x8f: /* EMPTY_SET */
            if (stack.len >= max_stack)
                goto refuse;
            objects++;
            PUSH(1);
            break;
        case 'h': /* BINGET */
        case 'j': { /* LONG_BINGET */
            size_t width = op == 'h' ? 1 : 4;
            uint64_t index = read_le(data, end, pos, width);
            pos += width;
            if (index >= memo.len || memo.items[index])
                goto refuse; /* a container fetched twice: not a tree (or not in the memo) */
            PUSH(0);
            break;
        }
        case 'a': /* APPEND */
        case 's': { /* SETITEM */
            int64_t depth;
            if (op == 'a') {
                NEED(2);
                depth = stack.items[--stack.len] + 1;
            } else {
                NEED(3);
                int64_t value = stack.items[--stack.len] + 1;
                int64_t key = stack.items[--stack.len] + 1;
                depth = value > key ? value : key;
            }
            if (depth > TOP) {
                if (depth > fast_depth)
                    goto refuse;
                TOP = depth;
            }
            break;
        }
        case 't': /* TUPLE */
        case 'l': /* LIST */
        case 'd': /* DICT */
        case 0x91: { /* FROZENSET */
            if (nmarks == 0) {
                result = R_INDEX;
                goto done;
            }
            size_t start = marks[--nmarks];
            objects++;
            int64_t depth = 0;
            for (size_t i = start; i < stack.len; i++)
                if (stack.items[i] > depth)
                    depth = stack.items[i];
            depth += 1;
            if (depth > fast_depth)
                goto refuse;
            if (start < stack.len)
                stack.len = start;
            PUSH(depth);
            break;
        }
        case 0x95: { /* FRAME */
            uint64_t length = read_le(data, end, pos, 8);
            pos += 8;
            if (pos > end || length > (uint64_t)(end - pos)) {
                result = R_INDEX; /* past the end: not proven (for a prefix, plain so far) */
                goto done;
            }
            break;
        }
        case 'X': /* BINUNICODE */
        case 'B': /* BINBYTES */
        case 0x8b: /* LONG4 */
        case 0x8d: /* BINUNICODE8 */
        case 0x8e: /* BINBYTES8 */
        case 0x96: { /* BYTEARRAY8 */
            size_t width = (op == 'X' || op == 'B' || op == 0x8b) ? 4 : 8;
            uint64_t length = read_le(data, end, pos, width);
            pos += width;
            /* past the end, the C unpickler would allocate the claimed length first: not proven
               (but a prefix cut in the middle of a string is plain so far) */
            if (pos > end) {
                result = R_INDEX;
                goto done;
            }
            if (op == 0x8b && (length & 0x80000000u))
                goto refuse; /* a negative LONG4 length */
            if (length > (uint64_t)(end - pos)) {
                result = R_INDEX;
                goto done;
            }
            pos += (size_t)length;
            PUSH(0);
            break;
        }
        case 'q': /* BINPUT */
        case 'r': { /* LONG_BINPUT */
            size_t width = op == 'q' ? 1 : 4;
            uint64_t index = read_le(data, end, pos, width);
            pos += width;
            if (index == memo.len) {
                NEED(1);
                REMEMBER(TOP != 0);
            } else if (index < memo.len) {
                NEED(1);
                memo.items[index] = TOP != 0;
            } else {
                goto refuse; /* the C memo would grow to twice the index */
            }
            break;
        }
        case '0': /* POP: pops the mark when nothing was pushed since it, as pickle does */
            if (nmarks && marks[nmarks - 1] == stack.len) {
                nmarks--;
            } else {
                NEED(1);
                stack.len--;
            }
            break;
        case '1': { /* POP_MARK */
            if (nmarks == 0) {
                result = R_INDEX;
                goto done;
            }
            size_t start = marks[--nmarks];
            if (start < stack.len)
                stack.len = start;
            break;
        }
        case 0x97: /* NEXT_BUFFER */
            objects++;
            PUSH(0);
            break;
        case 0x98: /* READONLY_BUFFER */
            NEED(1);
            if (TOP)
                goto refuse;
            break;
        case 0x80: /* PROTO */
            pos += 1;
            break;
        case '.': /* STOP: a graph the final pass would refuse as too big to check: not proven */
            result = (stack.len == 1 && nmarks == 0 && objects < max_objects) ? R_TRUE : R_FALSE;
            goto done;
        default: /* globals, calls, BUILD, DUP, persistent ids, protocol 0-1 text opcodes */
            goto refuse;
        }
    }
refuse:
    result = R_FALSE;
done:
    PyMem_RawFree(stack.items);
    PyMem_RawFree(memo.items);
    PyMem_RawFree(marks);
    return result;
}

static PyObject *
walk(PyObject *module, PyObject *args)
{
    Py_buffer view;
    long long fast_depth, max_objects;
    Py_ssize_t max_depth, max_stack;
    if (!PyArg_ParseTuple(args, "y*LnnL:walk", &view, &fast_depth, &max_depth, &max_stack, &max_objects))
        return NULL;
    (void)module;
    int result;
    /* len(...) >= a negative limit holds as it does for 0, and objects < a limit <= 0 never does */
    max_depth = max_depth < 0 ? 0 : max_depth;
    max_stack = max_stack < 0 ? 0 : max_stack;
    uint64_t objects_limit = max_objects <= 0 ? 0 : (uint64_t)max_objects;
    Py_BEGIN_ALLOW_THREADS
    result = scan((const unsigned char *)view.buf, (size_t)view.len, (int64_t)fast_depth, (size_t)max_depth,
                  (size_t)max_stack, objects_limit);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    switch (result) {
    case R_TRUE:
        Py_RETURN_TRUE;
    case R_FALSE:
        Py_RETURN_FALSE;
    case R_INDEX:
        Py_RETURN_NONE;
    default:
        return PyErr_NoMemory();
    }
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(buffer, fast_depth, max_depth, max_stack, max_loaded_objects) -> True, False or None\n\n"
     "The proof of modelkeep.formats._fastpath._walk over any contiguous buffer; None where\n"
     "_walk raises IndexError (a truncated stream)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef plainscan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_plainscan",
    .m_doc = "The pre-scan of modelkeep.formats._fastpath, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__plainscan(void)
{
    return PyModule_Create(&plainscan_module);
}
