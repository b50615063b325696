/* steplog._speedups: Tracker.log()'s fast path, compiled (optional).
 *
 * The same steps as the pure-Python fast path in steplog/tracker.py
 * (``_TrackerBase._log_py``), which stays the reference and the fallback: without this
 * module (no compiler at install time, another interpreter, STEPLOG_PURE_PYTHON=1),
 * ``Tracker.log`` is that method. Anything but the common case is handed to it before
 * any side effect: no run, a mapping that is not a dict, a step that is not a plain int
 * >= 0. After the step is taken, the rare branch (``_detour``: value watchers, a slow
 * spell; its two common cases are here), the misses (orjson cannot store a value as it
 * is) and the lines that do not fit go to the same Python methods the pure-Python path
 * calls.
 *
 * The lock-free append (LineBuffer's docstring gives the argument) is atomic here for
 * the plainer reason: from reading ``count`` to the append, this code runs no Python
 * code and never releases the GIL (reads and writes of the buffer's slots, a bytearray
 * resize), so no other thread and no signal handler can run in between.
 *
 * The tracker's, the buffer's and the value tap's hot attributes are read and written
 * at their slots' offsets (``_TrackerBase.__slots__``, ``LineBuffer.__slots__``,
 * ``ValueTap.__slots__``: setup() reads the offsets from the member descriptors), not by
 * the generic attribute lookup, which cost ~1 700 of the call's ~9 800 instructions.
 *
 * Also the value watchers' batch checks (finite_range, diverging: steplog/watch.py, whose
 * Python code stays the reference and decides every batch they return None for).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX, READONLY (3.12 on: also Py_T_OBJECT_EX) */
#include <math.h>   /* isfinite */
#include <string.h>

typedef struct {
    /* steplog.tracker's globals: ``_now`` (time.time) and ``_dumps`` (orjson.dumps) are
     * looked up there at each call, as the Python path does (a test that patches
     * ``_now``, e.g. freezegun, patches both paths). */
    PyObject *globals;
    PyObject *option;      /* orjson.OPT_APPEND_NEWLINE */
    PyObject *count_type;  /* itertools.count */
    PyObject *template;    /* {"step": None, "time": None, "data": None} */
    PyObject *zero;        /* 0 */
    /* The classes whose ``__slots__`` hold what log() reads, and those slots' offsets
     * in their instances (read at setup from the member descriptors: the classes'
     * ``__slots__`` stay the one definition). */
    PyTypeObject *tracker_type, *buffer_type, *tap_type;
    PyTypeObject *plain_type;  /* the last type of ``self`` that hides no slot */
    Py_ssize_t at_buffer, at_detour, at_steps, at_misses, at_slow_calls, at_tap;
    Py_ssize_t at_count, at_limit, at_fast_line, at_data, at_line_limit;
    Py_ssize_t at_key, at_absent, at_values;
} State;

static State state;

/* Interned attribute and key names. */
static PyObject *s_buffer, *s_steps, *s_detour, *s_misses, *s_encoder, *s_count,
    *s_limit, *s_fast_line, *s_data, *s_line_limit, *s_step, *s_time, *s_log_py,
    *s_missed_fast, *s_log_slow, *s_encode_row, *s_queue_line, *s_put_slow,
    *s_took_detour, *s_slow_calls, *s_tap, *s_key, *s_absent, *s_values, *s_now, *s_dumps,
    *s_hides_slots;

/* Call the function steplog.tracker's global ``name`` refers to now. */
static PyObject *
call_global(PyObject *name, PyObject *const *args, size_t nargs)
{
    PyObject *function = PyDict_GetItemWithError(state.globals, name), *result;
    if (function == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_NameError, "steplog.tracker.%U is not defined", name);
        }
        return NULL;
    }
    Py_INCREF(function);  /* (the call may rebind the name) */
    result = PyObject_Vectorcall(function, args, nargs, NULL);
    Py_DECREF(function);
    return result;
}

static PyObject *
fallback(PyObject *self, PyObject *data, PyObject *step)
{
    PyObject *args[3] = {self, data, step};
    return PyObject_VectorcallMethod(s_log_py, args, 3, NULL);
}

/* Whether ``b"null"`` occurs in the line: orjson writes NaN and the infinities so. */
static int
has_null(const char *s, Py_ssize_t n)
{
    const char *end = s + n;
    while (n >= 4) {
        const char *at = memchr(s, 'n', (size_t)(n - 3));
        if (at == NULL) {
            return 0;
        }
        if (at[1] == 'u' && at[2] == 'l' && at[3] == 'l') {
            return 1;
        }
        s = at + 1;
        n = end - s;
    }
    return 0;
}

/* The slot at ``offset`` of ``obj`` (an instance of the class it was read from):
 * borrowed, or NULL with an exception set when it is empty (never assigned, or
 * deleted): the AttributeError Python's own lookup raises. */
static PyObject *
slot(PyObject *obj, Py_ssize_t offset, PyObject *name)
{
    PyObject *value = *(PyObject **)((char *)obj + offset);
    if (value == NULL) {
        PyObject *found = PyObject_GetAttr(obj, name);  /* (raises the error) */
        if (found != NULL) {  /* (a __getattr__ answered for the empty slot) */
            Py_DECREF(found);
            PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%U'",
                         Py_TYPE(obj)->tp_name, name);
        }
    }
    return value;
}

/* Store a new reference into the slot (what the slot's descriptor does; the old value,
 * an int, an iterator or a bool, runs no Python code when it is freed). Steals it. */
static void
set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    PyObject **at = (PyObject **)((char *)obj + offset);
    PyObject *old = *at;
    *at = value;
    Py_XDECREF(old);
}

/* Read an int slot as a Py_ssize_t; -1 with an exception set on failure. */
static int
get_ssize(PyObject *obj, Py_ssize_t offset, PyObject *name, Py_ssize_t *out)
{
    PyObject *value = slot(obj, offset, name);
    if (value == NULL) {
        return -1;
    }
    *out = PyLong_AsSsize_t(value);
    if (*out == -1 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

static PyObject *
call_method(PyObject *obj, PyObject *name, PyObject *const *args, size_t nargs)
{
    /* args[0] is obj; nargs counts it. */
    return PyObject_VectorcallMethod(name, (PyObject **)args, nargs, NULL);
}

/* Append ``line`` to the bytearray. Into the room its allocation has, as bytearray's own
 * in-place concatenation does, except that an emptied bytearray (see emptied()) keeps
 * its allocation: bytearray's resize shrinks one whose size falls below half of it.
 * When it must grow, bytearray's resize (its growth policy, and its BufferError while a
 * memoryview of it lives). */
static int
append(PyObject *bytes, PyObject *line)
{
    PyByteArrayObject *b = (PyByteArrayObject *)bytes;
    Py_ssize_t size = PyBytes_GET_SIZE(line);
    Py_ssize_t used = Py_SIZE(b);
    if (b->ob_exports == 0 && b->ob_bytes != NULL
        && used + size + 1 <= b->ob_alloc - (b->ob_start - b->ob_bytes)) {
        memcpy(b->ob_start + used, PyBytes_AS_STRING(line), (size_t)size);
        Py_SET_SIZE(b, used + size);
        b->ob_start[used + size] = '\0';
        return 0;
    }
    if (PyByteArray_Resize(bytes, used + size) < 0) {
        return -1;
    }
    memcpy(PyByteArray_AS_STRING(bytes) + used, PyBytes_AS_STRING(line), (size_t)size);
    return 0;
}

/* The queueing after the encoding: the lock-free append, or the slow ways. Steals
 * ``line``. */
static PyObject *
queue(PyObject *self, PyObject *buffer, PyObject *line, PyObject *step, PyObject *now,
      PyObject *data)
{
    Py_ssize_t size = PyBytes_GET_SIZE(line);
    Py_ssize_t count, limit, fast_line;
    PyObject *result = NULL;


    /* The lock-free region: no Python code runs and the GIL is held from here to the
     * append (slots of a LineBuffer; a bytearray resize). */
    if (get_ssize(buffer, state.at_count, s_count, &count) < 0
        || get_ssize(buffer, state.at_limit, s_limit, &limit) < 0
        || get_ssize(buffer, state.at_fast_line, s_fast_line, &fast_line) < 0) {
        goto done;
    }
    if (count < limit && size <= fast_line) {
        PyObject *bytes = slot(buffer, state.at_data, s_data);
        if (bytes == NULL) {
            goto done;
        }
        if (PyByteArray_CheckExact(bytes)) {
            /* Append, then count (a failed append, BufferError, counts nothing). */
            PyObject *next = PyLong_FromSsize_t(count + 1);
            if (next == NULL || append(bytes, line) < 0) {
                Py_XDECREF(next);
                goto done;
            }
            set_slot(buffer, state.at_count, next);
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    /* A wake-up, an overflow, the writer process's ring, or a line over the limit. */
    {
        Py_ssize_t line_limit;
        if (get_ssize(buffer, state.at_line_limit, s_line_limit, &line_limit) < 0) {
            goto done;
        }
        if (size > line_limit) {
            PyObject *args[6] = {self, buffer, line, step, now, data};
            result = call_method(self, s_queue_line, args, 6);
        }
        else {
            PyObject *args[2] = {buffer, line};
            result = call_method(buffer, s_put_slow, args, 2);
        }
    }
done:
    Py_DECREF(line);
    return result;
}

/* The slow spell of _TrackerBase._took_detour for a tracker without value watchers (a
 * loop that logs tensors: every call for a while), without its frame: count the spell
 * down and take the slow path. */
static PyObject *
spell_without_tap(PyObject *self, Py_ssize_t slow_calls, PyObject *buffer, PyObject *data,
                  PyObject *step, PyObject *now)
{
    PyObject *left = PyLong_FromSsize_t(slow_calls - 1);
    if (left == NULL) {
        return NULL;
    }
    set_slot(self, state.at_slow_calls, left);
    if (slow_calls == 1) {
        set_slot(self, state.at_detour, Py_NewRef(Py_False));
    }
    PyObject *args[5] = {self, buffer, data, step, now};
    return call_method(self, s_log_slow, args, 5);
}

/* The first case of _TrackerBase._took_detour, with no slow spell under way: the value
 * watchers' tap watches one key and the value is a plain float (or the key is absent):
 * queue it for the watchers (or skip it). 1: done, the fast path goes on; 0:
 * _took_detour decides; -1: error. */
static int
tap_float(PyObject *tap, PyObject *data, PyObject *step)
{
    PyObject *key, *absent, *value, *values, *queue;
    int done = 0;

    if (!PyObject_TypeCheck(tap, state.tap_type)) {
        return 0;  /* (_took_detour decides) */
    }
    key = slot(tap, state.at_key, s_key);
    absent = key == NULL ? NULL : slot(tap, state.at_absent, s_absent);
    if (absent == NULL) {
        return -1;
    }
    Py_INCREF(key);
    Py_INCREF(absent);
    value = PyDict_GetItemWithError(data, key);  /* borrowed: held at once, below */
    if (value == NULL && PyErr_Occurred()) {
        done = -1;
    }
    else if (value == NULL && absent == Py_None) {
        done = 1;  /* the watched key is absent: nothing to check */
    }
    else if (value != NULL && PyFloat_CheckExact(value)) {
        /* The step and the value side by side, no tuple (see ValueTap): from reading
         * the queue to the second append nothing allocates an object or runs Python
         * code (PyList_Append only grows the list's array), so the writer cannot swap
         * the queue between the two appends. */
        Py_INCREF(value);
        values = slot(tap, state.at_values, s_values);
        if (values == NULL) {
            done = -1;
        }
        else {
            queue = PyList_Check(values) && PyList_GET_SIZE(values) > 0
                        ? PyList_GET_ITEM(values, 0)
                        : NULL;
            if (queue != NULL && PyList_CheckExact(queue)) {
                Py_ssize_t size = PyList_GET_SIZE(queue);
                done = 1;
                if (PyList_Append(queue, step) < 0) {
                    done = -1;
                }
                else if (PyList_Append(queue, value) < 0) {
                    /* (no half pair left: the step goes too) */
                    PyObject *type, *error, *traceback;
                    PyErr_Fetch(&type, &error, &traceback);
                    PyList_SetSlice(queue, size, size + 1, NULL);
                    PyErr_Restore(type, error, traceback);
                    done = -1;
                }
            }
        }
        Py_DECREF(value);
    }
    Py_DECREF(key);
    Py_DECREF(absent);
    return done;
}

/* log()'s rare branch (``_detour``): _TrackerBase._took_detour, with its two common cases
 * here (``_slow_calls`` and ``_tap`` read once for both). 1: the event is queued
 * (``*result`` set, NULL on error); 0: the fast path goes on; -1: error. */
static int
take_detour(PyObject *self, PyObject *buffer, PyObject *data, PyObject *step, PyObject *now,
            PyObject **result)
{
    Py_ssize_t slow_calls;
    PyObject *tap;
    int queued = 0;

    if (get_ssize(self, state.at_slow_calls, s_slow_calls, &slow_calls) < 0) {
        return -1;
    }
    tap = slot(self, state.at_tap, s_tap);
    if (tap == NULL) {
        return -1;
    }
    Py_INCREF(tap);
    if (slow_calls > 0 && tap == Py_None) {
        Py_DECREF(tap);
        *result = spell_without_tap(self, slow_calls, buffer, data, step, now);
        return 1;
    }
    if (slow_calls == 0 && tap != Py_None) {
        queued = tap_float(tap, data, step);
    }
    Py_DECREF(tap);
    if (queued != 0) {
        return queued < 0 ? -1 : 0;  /* (a queued float: the fast path goes on) */
    }
    /* Not a plain float for the one watched key, or a spell with a tap to feed. */
    PyObject *args[5] = {self, buffer, data, step, now};
    PyObject *took = call_method(self, s_took_detour, args, 5);
    if (took == NULL) {
        return -1;
    }
    queued = PyObject_IsTrue(took);
    Py_DECREF(took);
    if (queued > 0) {
        *result = Py_NewRef(Py_None);
    }
    return queued;
}

/* Whether ``self``'s class leaves the tracker's slots alone: one that hides one of them
 * (``_steplog_hides_slots`` is not False: _TrackerBase.__init_subclass__ sets it) logs
 * with the Python method, which looks names up. Checked once per type in a row (the
 * flag is set when the class is made). 1: yes, 0: no, -1: error. */
static int
plain_type(PyTypeObject *type)
{
    if (type == state.plain_type) {
        return 1;
    }
    Py_INCREF(type);  /* (the lookup may run code that frees the class) */
    PyObject *found = PyObject_GetAttr((PyObject *)type, s_hides_slots);
    int plain = found == Py_False;
    Py_XDECREF(found);
    if (plain) {
        Py_XSETREF(state.plain_type, (PyTypeObject *)Py_NewRef(type));
    }
    Py_DECREF(type);
    return found == NULL ? -1 : plain;
}

static PyObject *
log_impl(PyObject *self, PyObject *data, PyObject *step_arg)
{
    PyObject *buffer = NULL, *flag = NULL, *step = NULL, *now = NULL, *record = NULL,
             *line = NULL, *result = NULL;
    int detour, plain;

    plain = plain_type(Py_TYPE(self));
    if (plain <= 0) {
        return plain < 0 ? NULL : fallback(self, data, step_arg);
    }
    buffer = *(PyObject **)((char *)self + state.at_buffer);
    if (buffer == NULL || buffer == Py_None || !PyDict_CheckExact(data)
        || !PyObject_TypeCheck(buffer, state.buffer_type)) {
        /* (no run, no plain dict, or a tracker not set up: Python's errors) */
        buffer = NULL;
        result = fallback(self, data, step_arg);
        goto done;
    }
    Py_INCREF(buffer);  /* (held: a patched clock may run code that ends the run) */
    flag = slot(self, state.at_detour, s_detour);
    if (flag == NULL) {
        goto done;
    }
    detour = flag == Py_False ? 0 : flag == Py_True ? 1 : PyObject_IsTrue(flag);
    if (detour < 0) {
        goto done;
    }
    if (step_arg == Py_None) {
        PyObject *steps = slot(self, state.at_steps, s_steps);
        if (steps == NULL) {
            goto done;
        }
        if (!PyIter_Check(steps)) {  /* (as next() raises) */
            PyErr_Format(PyExc_TypeError, "'%.200s' object is not an iterator",
                         Py_TYPE(steps)->tp_name);
            goto done;
        }
        Py_INCREF(steps);
        step = PyIter_Next(steps);
        Py_DECREF(steps);
        if (step == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, "steplog: the step counter ended");
            }
            goto done;
        }
    }
    else if (PyLong_CheckExact(step_arg)) {
        /* A plain int (bool is a subclass: not exact) from 0 to PY_SSIZE_T_MAX - 1: as
         * _explicit_step does; the Python path raises for the others, or counts on
         * from a huge one. */
        Py_ssize_t value = PyLong_AsSsize_t(step_arg);
        PyObject *next, *steps;
        if (value == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            value = -1;
        }
        if (value < 0 || value == PY_SSIZE_T_MAX) {
            result = fallback(self, data, step_arg);
            goto done;
        }
        next = PyLong_FromSsize_t(value + 1);
        if (next == NULL) {
            goto done;
        }
        steps = PyObject_CallOneArg(state.count_type, next);
        Py_DECREF(next);
        if (steps == NULL) {
            goto done;
        }
        set_slot(self, state.at_steps, steps);
        step = Py_NewRef(step_arg);
    }
    else {
        result = fallback(self, data, step_arg);
        goto done;
    }
    now = call_global(s_now, NULL, 0);
    if (now == NULL) {
        goto done;
    }
    if (detour) {
        int queued = take_detour(self, buffer, data, step, now, &result);
        if (queued != 0) {
            goto done;  /* (queued: result set; -1: the error is set) */
        }
    }
    record = PyDict_Copy(state.template);  /* (a copy of a dict with these keys: presized) */
    if (record == NULL || PyDict_SetItem(record, s_step, step) < 0
        || PyDict_SetItem(record, s_time, now) < 0 || PyDict_SetItem(record, s_data, data) < 0) {
        goto done;
    }
    {
        PyObject *args[3] = {record, Py_None, state.option};
        line = call_global(s_dumps, args, 3);
    }
    if (line == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {  /* orjson.JSONEncodeError too */
            goto done;
        }
        PyErr_Clear();
        {
            PyObject *args[1] = {self};
            PyObject *r = call_method(self, s_missed_fast, args, 1);
            if (r == NULL) {
                goto done;
            }
            Py_DECREF(r);
        }
        {
            PyObject *args[5] = {self, buffer, data, step, now};
            result = call_method(self, s_log_slow, args, 5);
        }
        goto done;
    }
    if (!PyBytes_Check(line)) {
        PyErr_SetString(PyExc_TypeError, "steplog: orjson.dumps returned no bytes");
        goto done;
    }
    {
        PyObject *misses = slot(self, state.at_misses, s_misses);
        if (misses == NULL) {
            goto done;
        }
        if (misses != state.zero) {  /* (0 is one object: CPython caches small ints) */
            int some = PyObject_IsTrue(misses);
            if (some < 0) {
                goto done;
            }
            if (some) {
                set_slot(self, state.at_misses, Py_NewRef(state.zero));
            }
        }
    }
    if (has_null(PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line))) {
        /* NaN and infinities come out as null: tag them */
        PyObject *encoder = PyObject_GetAttr(self, s_encoder);
        if (encoder == NULL) {
            goto done;
        }
        PyObject *args[4] = {encoder, step, now, data};
        PyObject *tagged = call_method(encoder, s_encode_row, args, 4);
        Py_DECREF(encoder);
        if (tagged == NULL) {
            goto done;
        }
        if (!PyBytes_Check(tagged)) {
            Py_DECREF(tagged);
            PyErr_SetString(PyExc_TypeError, "steplog: encode_row returned no bytes");
            goto done;
        }
        Py_SETREF(line, tagged);
    }
    result = queue(self, buffer, line, step, now, data);
    line = NULL;  /* (stolen) */
done:
    Py_XDECREF(buffer);
    Py_XDECREF(step);
    Py_XDECREF(now);
    Py_XDECREF(record);
    Py_XDECREF(line);
    return result;
}

/* log(self, data, step=None) */
static PyObject *
log_method(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data = NULL, *step = Py_None;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);

    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "log() takes from 2 to 3 positional arguments but %zd were given",
                     nargs + 1);
        return NULL;
    }
    if (nargs >= 1) {
        data = args[0];
    }
    if (nargs == 2) {
        step = args[1];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject *value = args[nargs + i];
        if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "data") == 0) {
            if (data != NULL) {
                PyErr_SetString(PyExc_TypeError, "log() got multiple values for argument 'data'");
                return NULL;
            }
            data = value;
        }
        else if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "step") == 0) {
            if (nargs == 2) {
                PyErr_SetString(PyExc_TypeError, "log() got multiple values for argument 'step'");
                return NULL;
            }
            step = value;
        }
        else {
            PyErr_Format(PyExc_TypeError, "log() got an unexpected keyword argument '%S'", name);
            return NULL;
        }
    }
    if (data == NULL) {
        PyErr_SetString(PyExc_TypeError, "log() missing 1 required positional argument: 'data'");
        return NULL;
    }
    return log_impl(self, data, step);
}

static PyMethodDef log_def = {
    "log", (PyCFunction)(void (*)(void))log_method, METH_FASTCALL | METH_KEYWORDS, NULL};

/* bind(cls, doc): Tracker.log for ``cls`` (setup's tracker class or a subclass) and its
 * subclasses, as a method descriptor (so that ``tracker.log(...)`` makes no bound-method
 * object; it also checks that ``self`` is an instance, whose slots log() reads). */
static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "bind(cls, doc)");
        return NULL;
    }
    if (state.tracker_type == NULL
        || !PyType_IsSubtype((PyTypeObject *)args[0], state.tracker_type)) {
        PyErr_SetString(PyExc_TypeError, "bind(): not the tracker class given to setup()");
        return NULL;
    }
    const char *doc = PyUnicode_AsUTF8(args[1]);
    if (doc == NULL) {
        return NULL;
    }
    /* The docstring lives as long as the process (one per bind; bound once). */
    char *kept = PyMem_RawMalloc(strlen(doc) + 1);
    if (kept == NULL) {
        return PyErr_NoMemory();
    }
    strcpy(kept, doc);
    log_def.ml_doc = kept;
    Py_CLEAR(state.plain_type);
    return PyDescr_NewMethod((PyTypeObject *)args[0], &log_def);
}

/* The offset of the object slot ``name`` that ``cls`` declares in its ``__slots__``;
 * -1 with an exception set if it declares none. */
static Py_ssize_t
slot_offset(PyTypeObject *cls, PyObject *name)
{
    PyObject *found = PyDict_GetItemWithError(cls->tp_dict, name);
    if (found == NULL || !Py_IS_TYPE(found, &PyMemberDescr_Type)) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "setup(): %.100s declares no slot %R", cls->tp_name,
                         name);
        }
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)found)->d_member;
    if (member->type != T_OBJECT_EX || (member->flags & READONLY) || member->offset < 0
        || member->offset + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize) {
        PyErr_Format(PyExc_TypeError, "setup(): %.100s.%U is not a plain slot", cls->tp_name,
                     name);
        return -1;
    }
    return member->offset;
}

/* setup(globals, option, count, tracker_class, buffer_class, tap_class) */
static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyDict_Check(args[0]) || !PyType_Check(args[3])
        || !PyType_Check(args[4]) || !PyType_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "setup(globals, option, count, tracker_class, buffer_class, tap_class)");
        return NULL;
    }
    PyTypeObject *tracker = (PyTypeObject *)args[3], *buffer = (PyTypeObject *)args[4],
                 *tap = (PyTypeObject *)args[5];
    struct {
        Py_ssize_t *at;
        PyTypeObject *cls;
        PyObject *name;
    } slots[] = {
        {&state.at_buffer, tracker, s_buffer},
        {&state.at_detour, tracker, s_detour},
        {&state.at_steps, tracker, s_steps},
        {&state.at_misses, tracker, s_misses},
        {&state.at_slow_calls, tracker, s_slow_calls},
        {&state.at_tap, tracker, s_tap},
        {&state.at_count, buffer, s_count},
        {&state.at_limit, buffer, s_limit},
        {&state.at_fast_line, buffer, s_fast_line},
        {&state.at_data, buffer, s_data},
        {&state.at_line_limit, buffer, s_line_limit},
        {&state.at_key, tap, s_key},
        {&state.at_absent, tap, s_absent},
        {&state.at_values, tap, s_values},
    };
    enum { N_SLOTS = sizeof(slots) / sizeof(slots[0]) };
    Py_ssize_t found[N_SLOTS];
    for (size_t i = 0; i < N_SLOTS; i++) {  /* (all found before any is changed) */
        if ((found[i] = slot_offset(slots[i].cls, slots[i].name)) < 0) {
            return NULL;
        }
    }
    /* Once log() is bound, its instances' layout is fixed: a later setup() (a reload
     * of steplog.tracker makes new classes) must find the slots where they were. */
    for (size_t i = 0; state.tracker_type != NULL && i < N_SLOTS; i++) {
        if (found[i] != *slots[i].at) {
            PyErr_Format(PyExc_TypeError, "setup(): %R moved (another layout)", slots[i].name);
            return NULL;
        }
    }
    for (size_t i = 0; i < N_SLOTS; i++) {
        *slots[i].at = found[i];
    }
    Py_XSETREF(state.tracker_type, (PyTypeObject *)Py_NewRef(args[3]));
    Py_XSETREF(state.buffer_type, (PyTypeObject *)Py_NewRef(args[4]));
    Py_XSETREF(state.tap_type, (PyTypeObject *)Py_NewRef(args[5]));
    Py_XSETREF(state.globals, Py_NewRef(args[0]));
    Py_XSETREF(state.option, Py_NewRef(args[1]));
    Py_XSETREF(state.count_type, Py_NewRef(args[2]));
    if (state.zero == NULL && (state.zero = PyLong_FromLong(0)) == NULL) {
        return NULL;
    }
    if (state.template == NULL) {
        state.template = PyDict_New();
        if (state.template == NULL || PyDict_SetItem(state.template, s_step, Py_None) < 0
            || PyDict_SetItem(state.template, s_time, Py_None) < 0
            || PyDict_SetItem(state.template, s_data, Py_None) < 0) {
            Py_CLEAR(state.template);
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* emptied(b): empty a bytearray nobody else holds, keeping its allocation, for the
 * buffer's next batch (the writer recycles the one it wrote). Returns whether it did:
 * not when the bytearray is exported (a memoryview of it lives). */
static PyObject *
emptied(PyObject *module, PyObject *obj)
{
    PyByteArrayObject *b = (PyByteArrayObject *)obj;
    if (!PyByteArray_CheckExact(obj)) {
        PyErr_SetString(PyExc_TypeError, "emptied() takes a bytearray");
        return NULL;
    }
    if (b->ob_exports > 0 || b->ob_bytes == NULL) {
        Py_RETURN_FALSE;
    }
    /* What a "minor downsize" of bytearray's own resize does: the allocation stays. */
    b->ob_start = b->ob_bytes;
    Py_SET_SIZE(b, 0);
    b->ob_bytes[0] = '\0';
    Py_RETURN_TRUE;
}

/* append(b, line): append a bytes line to a bytearray as log() does (see append()). */
static PyObject *
append_py(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyByteArray_CheckExact(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "append(bytearray, bytes)");
        return NULL;
    }
    if (append(args[0], args[1]) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The value watchers' batch checks (steplog/watch.py) over a list of floats, without a
 * float object per value: each is the exact outcome of the Python expressions named,
 * or None where an item is not a finite float (the watcher then takes its Python
 * path, which converts ints and drops NaN and infinities). */

/* Whether ``item`` is a plain finite float (1, its value in ``*value``) or not (0). */
static inline int
finite_float(PyObject *item, double *value)
{
    if (!PyFloat_CheckExact(item)) {
        return 0;
    }
    *value = PyFloat_AS_DOUBLE(item);
    return isfinite(*value);
}

/* finite_range(values): ``(min(values), max(values))`` when ``values`` is a non-empty
 * list of finite floats, else None (above() and below(): a quiet batch). */
static PyObject *
finite_range(PyObject *module, PyObject *values)
{
    double low, high, value;
    Py_ssize_t n, i;

    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "finite_range(list)");
        return NULL;
    }
    n = PyList_GET_SIZE(values);
    if (n == 0 || !finite_float(PyList_GET_ITEM(values, 0), &low)) {
        Py_RETURN_NONE;
    }
    high = low;
    for (i = 1; i < n; i++) {
        if (!finite_float(PyList_GET_ITEM(values, i), &value)) {
            Py_RETURN_NONE;
        }
        if (value < low) {
            low = value;
        }
        if (value > high) {
            high = value;
        }
    }
    return Py_BuildValue("(dd)", low, high);
}

/* diverging(series, window, first, best, factor): diverging()'s outcome for each window
 * of ``window`` values in ``series`` (a list), as its Python code decides it: the
 * window sums (``first`` is the first window's, Python's ``sum()`` of it, passed in;
 * each next one the one before plus the value that enters minus the one that leaves,
 * the same additions in the same order as ``_window_sums``), each mean the sum divided
 * by the window, the lowest mean so far (from ``best``), and whether the mean is over
 * ``factor`` x that lowest one, where it is > 0 — on doubles (IEEE: the same roundings,
 * the same comparisons). Returns ``(held, lowest)``: ``held`` a list of bools, one per
 * window, or None when no window's mean is over (a quiet batch: no list), and the
 * lowest mean after the batch. None where an item is not a finite float or a sum is
 * not finite. */
static PyObject *
diverging(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *series, *held = NULL;
    Py_ssize_t window, n, count, i, k;
    double sum, best, factor, width, mean, entering, leaving;

    if (nargs != 5 || !PyList_CheckExact(args[0]) || !PyLong_Check(args[1])
        || !PyFloat_CheckExact(args[3]) || !PyFloat_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "diverging(list, int, float, float, float)");
        return NULL;
    }
    series = args[0];
    window = PyLong_AsSsize_t(args[1]);
    if (window == -1 && PyErr_Occurred()) {
        return NULL;
    }
    n = PyList_GET_SIZE(series);
    if (window < 1 || window > n) {
        PyErr_SetString(PyExc_ValueError, "diverging: a window of 1 to len(series)");
        return NULL;
    }
    best = PyFloat_AS_DOUBLE(args[3]);
    factor = PyFloat_AS_DOUBLE(args[4]);
    if (!finite_float(args[2], &sum)) {
        Py_RETURN_NONE;
    }
    for (i = 0; i < window; i++) {
        if (!finite_float(PyList_GET_ITEM(series, i), &leaving)) {
            Py_RETURN_NONE;
        }
    }
    width = (double)window;
    count = n - window + 1;
    for (k = 0; k < count; k++) {
        /* (a list's items may change only under the GIL, which this loop holds) */
        if (k > 0) {
            if (!finite_float(PyList_GET_ITEM(series, window + k - 1), &entering)) {
                Py_XDECREF(held);
                Py_RETURN_NONE;
            }
            leaving = PyFloat_AS_DOUBLE(PyList_GET_ITEM(series, k - 1));
            sum = sum + (entering - leaving);
            if (!isfinite(sum)) {
                Py_XDECREF(held);
                Py_RETURN_NONE;
            }
        }
        mean = sum / width;
        if (mean < best) {
            best = mean;
        }
        int over = best > 0 && mean > best * factor;
        if (over && held == NULL) {
            held = PyList_New(count);
            if (held == NULL) {
                return NULL;
            }
            for (i = 0; i < k; i++) {
                PyList_SET_ITEM(held, i, Py_NewRef(Py_False));
            }
        }
        if (held != NULL) {
            PyList_SET_ITEM(held, k, Py_NewRef(over ? Py_True : Py_False));
        }
    }
    return Py_BuildValue("(Nd)", held != NULL ? held : Py_NewRef(Py_None), best);
}

static PyMethodDef module_methods[] = {
    {"append", (PyCFunction)(void (*)(void))append_py, METH_FASTCALL, NULL},
    {"emptied", emptied, METH_O, NULL},
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, NULL},
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL, NULL},
    {"finite_range", finite_range, METH_O, NULL},
    {"diverging", (PyCFunction)(void (*)(void))diverging, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "steplog._speedups",
    "Tracker.log()'s fast path and the value watchers' batch checks, compiled.", -1,
    module_methods};

#define INTERN(var, text)                          \
    do {                                           \
        var = PyUnicode_InternFromString(text);    \
        if (var == NULL) {                         \
            return NULL;                           \
        }                                          \
    } while (0)

PyMODINIT_FUNC
PyInit__speedups(void)
{
    INTERN(s_buffer, "_buffer");
    INTERN(s_steps, "_steps");
    INTERN(s_detour, "_detour");
    INTERN(s_misses, "_misses");
    INTERN(s_encoder, "_encoder");
    INTERN(s_count, "count");
    INTERN(s_limit, "limit");
    INTERN(s_fast_line, "fast_line");
    INTERN(s_data, "data");
    INTERN(s_line_limit, "line_limit");
    INTERN(s_step, "step");
    INTERN(s_time, "time");
    INTERN(s_log_py, "_log_py");
    INTERN(s_missed_fast, "_missed_fast");
    INTERN(s_log_slow, "_log_slow");
    INTERN(s_encode_row, "encode_row");
    INTERN(s_queue_line, "_queue_line");
    INTERN(s_put_slow, "put_slow");
    INTERN(s_took_detour, "_took_detour");
    INTERN(s_slow_calls, "_slow_calls");
    INTERN(s_tap, "_tap");
    INTERN(s_key, "key");
    INTERN(s_absent, "absent");
    INTERN(s_values, "values");
    INTERN(s_now, "_now");
    INTERN(s_dumps, "_dumps");
    INTERN(s_hides_slots, "_steplog_hides_slots");
    return PyModule_Create(&module_def);
}
