/*
 * Compiled loops for the memory-bound steps of preprocessing (mimir.preprocessing._kernels).
 *
 * Each function does in one pass over memory what mimir/preprocessing/fusion.py,
 * projection.py and stations.py spell out as several NumPy passes, with the SAME
 * floating-point operations in the SAME order, so the results are bit-identical
 * (tests/preprocessing/test_kernels.py compares both paths on every step).
 *
 * Rules that keep the bits equal to NumPy's:
 *   - no fast-math, and no contraction of a * b + c into a fused multiply-add
 *     (setup.py passes -ffp-contract=off; the pragma below says the same to compilers
 *     that read it);
 *   - every product and sum is written out as NumPy evaluates it, in double unless the
 *     NumPy code works in float32, with the float32 roundings where NumPy has them.
 *
 * The Python wrappers in kernels.py check dtypes and shapes; the functions here check
 * again everything an index is computed from (buffer sizes, shapes, tap indices), so a
 * wrong argument raises ValueError instead of reading or writing out of bounds.
 * Every loop runs with the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define MAX_BUFS 16

/* Buffers taken from the arguments of one call, released together. */
typedef struct {
    Py_buffer views[MAX_BUFS];
    int n;
} Held;

static void release_all(Held *held)
{
    for (int i = 0; i < held->n; i++) {
        PyBuffer_Release(&held->views[i]);
    }
    held->n = 0;
}

/* The type code of a buffer's format ('d', 'f', 'q', 'l', ...), ignoring a byte-order prefix. */
static char format_code(const Py_buffer *view)
{
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') {
        f++;
    }
    return (f[0] != '\0' && f[1] == '\0') ? f[0] : '?';
}

enum Kind { F32, F64, I64 };

static int kind_matches(const Py_buffer *view, enum Kind kind)
{
    char c = format_code(view);
    switch (kind) {
    case F32:
        return c == 'f' && view->itemsize == 4;
    case F64:
        return c == 'd' && view->itemsize == 8;
    case I64:
        return (c == 'q' || c == 'l' || c == 'n') && view->itemsize == 8;
    }
    return 0;
}

static const char *kind_name(enum Kind kind)
{
    return kind == F32 ? "float32" : (kind == F64 ? "float64" : "int64");
}

/*
 * Take the buffer of `obj` into `held`: `ndim` dimensions of `kind`, writable if asked,
 * C-contiguous if asked (otherwise any strides that are whole multiples of the item size).
 * Returns the view, or NULL with an exception set.
 */
static Py_buffer *take(Held *held, PyObject *obj, const char *name, enum Kind kind, int ndim, int writable,
                       int contiguous)
{
    if (held->n >= MAX_BUFS) {
        PyErr_SetString(PyExc_RuntimeError, "too many buffers in one kernel call");
        return NULL;
    }
    Py_buffer *view = &held->views[held->n];
    int flags = (contiguous ? PyBUF_C_CONTIGUOUS : PyBUF_STRIDES) | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a %s%s %s array of %d dimension(s)", name,
                     writable ? "writable " : "", contiguous ? "C-contiguous" : "strided", kind_name(kind), ndim);
        return NULL;
    }
    held->n++;
    if (view->ndim != ndim || !kind_matches(view, kind)) {
        PyErr_Format(PyExc_ValueError, "%s must be a %s array of %d dimension(s)", name, kind_name(kind), ndim);
        return NULL;
    }
    for (int d = 0; d < ndim; d++) {
        if (view->strides[d] % view->itemsize != 0) {
            PyErr_Format(PyExc_ValueError, "%s has strides that are not whole elements", name);
            return NULL;
        }
    }
    return view;
}

#define SHAPE(v, d) ((v)->shape[d])
#define ESTRIDE(v, d) ((v)->strides[d] / (v)->itemsize)

static PyObject *fail(Held *held)
{
    release_all(held);
    return NULL;
}

/* ValueError unless every index in `idx[0:n]` lies in [0, bound). */
static int check_indices(const int64_t *idx, Py_ssize_t n, Py_ssize_t bound, const char *name)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= bound) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] = %lld is outside 0..%zd", name, i, (long long)idx[i], bound - 1);
            return 0;
        }
    }
    return 1;
}

/* ------------------------------------------------------------------ resample_into */

PyDoc_STRVAR(resample_into_doc,
"resample_into(voxels, a0, a1, wa0, wa1, b0, b1, wb0, wb1, c0, c1, wc0, wc1, z_from, out)\n\n"
"Separable clamped trilinear resampling of one station in one pass (fusion.resample_station's\n"
"values). voxels (rows, cols, slices) float32 C-contiguous; per axis the tap indices (int64) and\n"
"weights (float64, w0 = 1 - da, w1 = da); writes output slices z_from .. z_from + depth - 1 into\n"
"out (rows_out, cols_out, depth) float32 C-contiguous.");

static PyObject *resample_into(PyObject *self, PyObject *args)
{
    PyObject *o[15];
    Py_ssize_t z_from;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOnO:resample_into", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                          &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &z_from, &o[14])) {
        return NULL;
    }
    Held held = {.n = 0};
    static const char *names[13] = {"voxels", "a0", "a1", "wa0", "wa1", "b0", "b1", "wb0", "wb1",
                                    "c0", "c1", "wc0", "wc1"};
    Py_buffer *v[13];
    v[0] = take(&held, o[0], names[0], F32, 3, 0, 1);
    if (!v[0]) return fail(&held);
    for (int i = 1; i < 13; i++) {
        int is_weight = ((i - 1) % 4) >= 2;
        v[i] = take(&held, o[i], names[i], is_weight ? F64 : I64, 1, 0, 1);
        if (!v[i]) return fail(&held);
    }
    Py_buffer *out = take(&held, o[14], "out", F32, 3, 1, 1);
    if (!out) return fail(&held);

    Py_ssize_t n_rows = SHAPE(v[0], 0), n_cols = SHAPE(v[0], 1), n_slices = SHAPE(v[0], 2);
    Py_ssize_t rows_out = SHAPE(out, 0), cols_out = SHAPE(out, 1), depth = SHAPE(out, 2);
    Py_ssize_t need[3] = {rows_out, cols_out, z_from + depth};
    Py_ssize_t bound[3] = {n_rows, n_cols, n_slices};
    if (z_from < 0) {
        PyErr_SetString(PyExc_ValueError, "z_from must be >= 0");
        return fail(&held);
    }
    for (int axis = 0; axis < 3; axis++) {
        for (int t = 0; t < 4; t++) {
            Py_buffer *tap = v[1 + 4 * axis + t];
            if (SHAPE(tap, 0) < need[axis]) {
                PyErr_Format(PyExc_ValueError, "%s has %zd entries, %zd needed", names[1 + 4 * axis + t],
                             SHAPE(tap, 0), need[axis]);
                return fail(&held);
            }
            if (t < 2 && !check_indices((const int64_t *)tap->buf, need[axis], bound[axis], names[1 + 4 * axis + t])) {
                return fail(&held);
            }
        }
    }
    if (rows_out == 0 || cols_out == 0 || depth == 0) {
        release_all(&held);
        Py_RETURN_NONE;
    }
    double *row = malloc(sizeof(double) * (size_t)(n_cols * n_slices));
    double *col = malloc(sizeof(double) * (size_t)n_slices);
    if (!row || !col) {
        free(row);
        free(col);
        release_all(&held);
        return PyErr_NoMemory();
    }
    const float *vox = (const float *)v[0]->buf;
    const int64_t *a0 = v[1]->buf, *a1 = v[2]->buf, *b0 = v[5]->buf, *b1 = v[6]->buf;
    const int64_t *c0 = v[9]->buf, *c1 = v[10]->buf;
    const double *wa0 = v[3]->buf, *wa1 = v[4]->buf, *wb0 = v[7]->buf, *wb1 = v[8]->buf;
    const double *wc0 = v[11]->buf, *wc1 = v[12]->buf;
    float *dst = (float *)out->buf;
    Py_ssize_t plane = n_cols * n_slices;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t x = 0; x < rows_out; x++) {
        const float *p0 = vox + a0[x] * plane;
        const float *p1 = vox + a1[x] * plane;
        double u0 = wa0[x], u1 = wa1[x];
        for (Py_ssize_t i = 0; i < plane; i++) {
            double lo = (double)p0[i] * u0;
            double hi = (double)p1[i] * u1;
            row[i] = lo + hi;
        }
        for (Py_ssize_t y = 0; y < cols_out; y++) {
            const double *r0 = row + b0[y] * n_slices;
            const double *r1 = row + b1[y] * n_slices;
            double v0 = wb0[y], v1 = wb1[y];
            for (Py_ssize_t k = 0; k < n_slices; k++) {
                double lo = r0[k] * v0;
                double hi = r1[k] * v1;
                col[k] = lo + hi;
            }
            float *o_line = dst + (x * cols_out + y) * depth;
            for (Py_ssize_t z = 0; z < depth; z++) {
                Py_ssize_t zz = z + z_from;
                double lo = col[c0[zz]] * wc0[zz];
                double hi = col[c1[zz]] * wc1[zz];
                o_line[z] = (float)(lo + hi);
            }
        }
    }
    Py_END_ALLOW_THREADS

    free(row);
    free(col);
    release_all(&held);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ placed stations */

/*
 * Stations placed but not yet pasted: station i is buf[offsets[i]:] read as a C-ordered float32
 * array of shapes[i] (rows, cols, slices), placed at starts[i] in a (n_rows, n_cols, n_slices)
 * volume; along each (row, col) line its slices below splits[i] are added to what earlier
 * stations wrote, the rest assigned (fusion.paste). Water and fat share one placement.
 */
typedef struct {
    Py_ssize_t n;
    const int64_t *offsets, *shapes, *starts, *splits;
    Py_ssize_t n_rows, n_cols, n_slices;
} Placement;

/*
 * Take the placement arrays and check that every station lies inside the volume and its buffer
 * (of `buf_len` floats), and that the stations reach the volume's last slice, so that
 * paste_line writes every slice of every line.
 */
static int take_placement(Held *held, PyObject *o_off, PyObject *o_shp, PyObject *o_sta, PyObject *o_spl,
                          Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t n_slices, Py_ssize_t buf_len,
                          Placement *p)
{
    Py_buffer *offs = take(held, o_off, "offsets", I64, 1, 0, 1);
    if (!offs) return 0;
    Py_buffer *shp = take(held, o_shp, "shapes", I64, 2, 0, 1);
    if (!shp) return 0;
    Py_buffer *sta = take(held, o_sta, "starts", I64, 2, 0, 1);
    if (!sta) return 0;
    Py_buffer *spl = take(held, o_spl, "splits", I64, 1, 0, 1);
    if (!spl) return 0;
    Py_ssize_t n = SHAPE(offs, 0);
    if (SHAPE(shp, 0) != n || SHAPE(shp, 1) != 3 || SHAPE(sta, 0) != n || SHAPE(sta, 1) != 3 || SHAPE(spl, 0) != n) {
        PyErr_SetString(PyExc_ValueError, "offsets, shapes (n, 3), starts (n, 3) and splits must describe n stations");
        return 0;
    }
    p->n = n;
    p->offsets = offs->buf;
    p->shapes = shp->buf;
    p->starts = sta->buf;
    p->splits = spl->buf;
    p->n_rows = n_rows;
    p->n_cols = n_cols;
    p->n_slices = n_slices;
    int64_t reach = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t *s = p->shapes + 3 * i, *a = p->starts + 3 * i;
        int ok = s[0] >= 0 && s[1] >= 0 && s[2] >= 0 && a[0] >= 0 && a[1] >= 0 && a[2] >= 0
                 && a[0] + s[0] <= n_rows && a[1] + s[1] <= n_cols && a[2] + s[2] <= n_slices
                 && p->splits[i] >= a[2] && p->splits[i] <= a[2] + s[2] && p->offsets[i] >= 0
                 && p->offsets[i] + s[0] * s[1] * s[2] <= buf_len;
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "station %zd does not fit into the volume or the buffer", i);
            return 0;
        }
        if (a[2] + s[2] > reach) {
            reach = a[2] + s[2];
        }
    }
    if (reach != n_slices) {
        PyErr_Format(PyExc_ValueError, "the stations end at slice %lld, the volume at %zd", (long long)reach, n_slices);
        return 0;
    }
    return 1;
}

/*
 * Take the water and fat buffers (equal sizes) of placed stations and their placement, and check
 * that `trim` slices can be cut at both ends of the volume.
 */
static int take_placed_pair(Held *held, PyObject *o_bw, PyObject *o_bf, PyObject **p_o, Py_ssize_t n_rows,
                            Py_ssize_t n_cols, Py_ssize_t n_slices, Py_ssize_t trim, const float **sw,
                            const float **sf, Placement *p)
{
    Py_buffer *bw = take(held, o_bw, "buf_w", F32, 1, 0, 1);
    if (!bw) return 0;
    Py_buffer *bf = take(held, o_bf, "buf_f", F32, 1, 0, 1);
    if (!bf) return 0;
    if (SHAPE(bw, 0) != SHAPE(bf, 0) || trim < 0 || 2 * trim > n_slices) {
        PyErr_SetString(PyExc_ValueError, "water and fat buffers of different sizes, or trim out of range");
        return 0;
    }
    if (!take_placement(held, p_o[0], p_o[1], p_o[2], p_o[3], n_rows, n_cols, n_slices, SHAPE(bw, 0), p)) {
        return 0;
    }
    *sw = bw->buf;
    *sf = bf->buf;
    return 1;
}

/* The pasted line (r, c) of one channel, all n_slices values, into `line` (fusion.paste's values). */
static void paste_line(const Placement *p, const float *buf, Py_ssize_t r, Py_ssize_t c, double *line)
{
    int64_t written = 0;
    for (Py_ssize_t i = 0; i < p->n; i++) {
        const int64_t *s = p->shapes + 3 * i, *a = p->starts + 3 * i;
        int64_t z0 = a[2], z1 = a[2] + s[2], split = p->splits[i];
        for (int64_t z = written; z < z0; z++) {
            line[z] = 0.0; /* a gap between stations */
        }
        if (a[0] <= r && r < a[0] + s[0] && a[1] <= c && c < a[1] + s[1]) {
            const float *src = buf + p->offsets[i] + ((r - a[0]) * s[1] + (c - a[1])) * s[2] - z0;
            for (int64_t z = z0; z < split; z++) {
                line[z] += (double)src[z];
            }
            for (int64_t z = split; z < z1; z++) {
                line[z] = (double)src[z];
            }
        } else {
            for (int64_t z = split; z < z1; z++) {
                line[z] = 0.0;
            }
        }
        if (z1 > written) {
            written = z1;
        }
    }
}

/* ------------------------------------------------------------------ paste_all */

PyDoc_STRVAR(paste_all_doc,
"paste_all(volume, buf, offsets, shapes, starts, splits)\n\n"
"Every station into the float64 volume (rows, cols, slices), C-contiguous, in one sweep over it,\n"
"writing every voxel (zeros where no station lies). Station i is buf[offsets[i]:] read as a\n"
"C-ordered float32 array of shapes[i], placed at starts[i]; along each line its slices below\n"
"splits[i] are added to what earlier stations wrote, the rest assigned (fusion.paste's values).");

static PyObject *paste_all(PyObject *self, PyObject *args)
{
    PyObject *o[6];
    if (!PyArg_ParseTuple(args, "OOOOOO:paste_all", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5])) {
        return NULL;
    }
    Held held = {.n = 0};
    Placement p;
    Py_buffer *vol = take(&held, o[0], "volume", F64, 3, 1, 1);
    if (!vol) return fail(&held);
    Py_buffer *buf = take(&held, o[1], "buf", F32, 1, 0, 1);
    if (!buf) return fail(&held);
    if (!take_placement(&held, o[2], o[3], o[4], o[5], SHAPE(vol, 0), SHAPE(vol, 1), SHAPE(vol, 2), SHAPE(buf, 0), &p)) {
        return fail(&held);
    }
    double *flat = vol->buf;
    const float *src = buf->buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < p.n_rows; r++) {
        for (Py_ssize_t c = 0; c < p.n_cols; c++) {
            paste_line(&p, src, r, c, flat + (r * p.n_cols + c) * p.n_slices);
        }
    }
    Py_END_ALLOW_THREADS
    release_all(&held);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ placed_lines */

PyDoc_STRVAR(placed_lines_doc,
"placed_lines(buf, offsets, shapes, starts, splits, n_rows, n_cols, n_slices, rows, cols, out)\n\n"
"The pasted lines (rows[k], cols[k]) of one channel, all n_slices values each, into out\n"
"(k, n_slices) float64 C-contiguous: paste_all's values without the volume.");

static PyObject *placed_lines(PyObject *self, PyObject *args)
{
    PyObject *o_buf, *o[4], *o_rows, *o_cols, *o_out;
    Py_ssize_t n_rows, n_cols, n_slices;
    if (!PyArg_ParseTuple(args, "OOOOOnnnOOO:placed_lines", &o_buf, &o[0], &o[1], &o[2], &o[3], &n_rows, &n_cols,
                          &n_slices, &o_rows, &o_cols, &o_out)) {
        return NULL;
    }
    Held held = {.n = 0};
    Placement p;
    Py_buffer *buf = take(&held, o_buf, "buf", F32, 1, 0, 1);
    if (!buf) return fail(&held);
    if (!take_placement(&held, o[0], o[1], o[2], o[3], n_rows, n_cols, n_slices, SHAPE(buf, 0), &p)) {
        return fail(&held);
    }
    Py_buffer *rb = take(&held, o_rows, "rows", I64, 1, 0, 1);
    if (!rb) return fail(&held);
    Py_buffer *cb = take(&held, o_cols, "cols", I64, 1, 0, 1);
    if (!cb) return fail(&held);
    Py_buffer *out = take(&held, o_out, "out", F64, 2, 1, 1);
    if (!out) return fail(&held);
    Py_ssize_t k = SHAPE(rb, 0);
    if (SHAPE(cb, 0) != k || SHAPE(out, 0) != k || SHAPE(out, 1) != n_slices) {
        PyErr_SetString(PyExc_ValueError, "placed_lines: rows, cols and out (k, n_slices) do not agree");
        return fail(&held);
    }
    const int64_t *rows = rb->buf, *cols = cb->buf;
    if (!check_indices(rows, k, n_rows, "rows") || !check_indices(cols, k, n_cols, "cols")) {
        return fail(&held);
    }
    double *dst = out->buf;
    const float *src = buf->buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < k; i++) {
        paste_line(&p, src, rows[i], cols[i], dst + i * n_slices);
    }
    Py_END_ALLOW_THREADS
    release_all(&held);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ linspace_edges */

/* np.linspace(lo, hi, n) for float64 scalars, operation for operation. */
static void linspace(double lo, double hi, double *edges, Py_ssize_t n)
{
    Py_ssize_t div = n - 1;
    double delta = hi - lo;
    double step = delta / (double)div;
    if (step == 0) {
        for (Py_ssize_t k = 0; k < n; k++) {
            double t = (double)k / (double)div;
            edges[k] = t * delta + lo;
        }
    } else {
        for (Py_ssize_t k = 0; k < n; k++) {
            double t = (double)k * step;
            edges[k] = t + lo;
        }
    }
    edges[n - 1] = hi;
}

PyDoc_STRVAR(linspace_edges_doc,
"linspace_edges(lo, hi, edges)\n\n"
"Fill edges (float64, C-contiguous, n >= 2 entries) with np.linspace(lo, hi, n), bit for bit.");

static PyObject *linspace_edges(PyObject *self, PyObject *args)
{
    double lo, hi;
    PyObject *o;
    if (!PyArg_ParseTuple(args, "ddO:linspace_edges", &lo, &hi, &o)) {
        return NULL;
    }
    Held held = {.n = 0};
    Py_buffer *e = take(&held, o, "edges", F64, 1, 1, 1);
    if (!e) return fail(&held);
    if (SHAPE(e, 0) < 2) {
        PyErr_SetString(PyExc_ValueError, "edges needs at least 2 entries");
        return fail(&held);
    }
    linspace(lo, hi, e->buf, SHAPE(e, 0));
    release_all(&held);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ projection pass */

/* Take the water and fat volumes (AP, LR, HF) float64, any strides, and check they have one shape. */
static int take_volume_pair(Held *held, PyObject *o_w, PyObject *o_f, Py_buffer **w, Py_buffer **f)
{
    *w = take(held, o_w, "water", F64, 3, 0, 0);
    if (!*w) return 0;
    *f = take(held, o_f, "fat", F64, 3, 0, 0);
    if (!*f) return 0;
    for (int d = 0; d < 3; d++) {
        if (SHAPE(*w, d) != SHAPE(*f, d)) {
            PyErr_SetString(PyExc_ValueError, "water and fat volumes of different shapes");
            return 0;
        }
    }
    return 1;
}


/* Sums, signal range and histogram of one AP slice, accumulated line by line. */
typedef struct {
    Py_ssize_t n_lr, n_hf, keep, nbins;
    double *cor_w, *cor_f, *sag_w, *sag_f; /* (n_lr, n_hf), (n_lr, n_hf), (keep, n_hf), (keep, n_hf) */
    double *lows, *highs;
    int64_t *hist;   /* (n_ap, nbins) */
    double *signal;  /* scratch (n_lr, n_hf) */
    double *edges;   /* scratch (nbins + 1) */
    double lo, hi;
    int finite;
} SliceSums;

/* One LR line (c) of AP slice r: water and fat values wl[z * ws], fl[z * fs], z < n_hf. */
static inline void add_line(SliceSums *t, Py_ssize_t r, Py_ssize_t c, const double *wl, Py_ssize_t ws,
                            const double *fl, Py_ssize_t fs)
{
    Py_ssize_t n_hf = t->n_hf;
    double *sig = t->signal + c * n_hf;
    double lo = t->lo, hi = t->hi;
    int finite = t->finite;
    for (Py_ssize_t z = 0; z < n_hf; z++) {
        double s = wl[z * ws] + fl[z * fs];
        if (s == 0) {
            s = 1.0;
        }
        if (!(s - s == 0)) {
            finite = 0;
        }
        sig[z] = s;
        if (s < lo) {
            lo = s;
        }
        if (s > hi) {
            hi = s;
        }
    }
    if (r < t->keep) {
        double *cw = t->cor_w + c * n_hf, *cf = t->cor_f + c * n_hf;
        double *sw = t->sag_w + r * n_hf, *sf = t->sag_f + r * n_hf;
        for (Py_ssize_t z = 0; z < n_hf; z++) {
            double wv = wl[z * ws], fv = fl[z * fs];
            cw[z] += wv;
            cf[z] += fv;
            sw[z] += wv;
            sf[z] += fv;
        }
    }
    t->lo = lo;
    t->hi = hi;
    t->finite = finite;
}

/* Close AP slice r: its range and histogram. Returns 0 when a signal value was not finite. */
static inline int close_slice(SliceSums *t, Py_ssize_t r)
{
    if (!t->finite) {
        return 0;
    }
    double lo = t->lo, hi = t->hi;
    t->lows[r] = lo;
    t->highs[r] = hi;
    t->lo = INFINITY;
    t->hi = -INFINITY;
    if (lo == hi) {
        return 1;
    }
    Py_ssize_t nbins = t->nbins;
    double *edges = t->edges;
    linspace(lo, hi, edges, nbins + 1);
    double denom = hi - lo;
    int64_t *hrow = t->hist + r * nbins;
    Py_ssize_t count = t->n_lr * t->n_hf;
    for (Py_ssize_t p = 0; p < count; p++) {
        double s = t->signal[p];
        double scaled = (s - lo) / denom;
        Py_ssize_t i = (Py_ssize_t)(scaled * (double)nbins);
        if (i == nbins) {
            i -= 1;
        }
        if (s < edges[i]) {
            i -= 1;
        }
        if (s >= edges[i + 1] && i != nbins - 1) {
            i += 1;
        }
        if (i < 0) { /* not reached for finite s in [lo, hi]; a guard, not a rule */
            i = 0;
        } else if (i >= nbins) {
            i = nbins - 1;
        }
        hrow[i] += 1;
    }
    return 1;
}

/*
 * Take the output arrays of a projection pass over an (n_ap, n_lr, n_hf) volume into `t`
 * (o: cor_w, cor_f, sag_w, sag_f, lows, highs, hist) and allocate its scratch.
 */
static int take_sums(Held *held, PyObject **o, Py_ssize_t n_ap, Py_ssize_t n_lr, Py_ssize_t n_hf, Py_ssize_t keep,
                     SliceSums *t)
{
    static const char *names[4] = {"cor_w", "cor_f", "sag_w", "sag_f"};
    Py_buffer *v[4];
    for (int i = 0; i < 4; i++) {
        v[i] = take(held, o[i], names[i], F64, 2, 1, 1);
        if (!v[i]) return 0;
    }
    Py_buffer *lo_b = take(held, o[4], "lows", F64, 1, 1, 1);
    if (!lo_b) return 0;
    Py_buffer *hi_b = take(held, o[5], "highs", F64, 1, 1, 1);
    if (!hi_b) return 0;
    Py_buffer *h = take(held, o[6], "hist", I64, 2, 1, 1);
    if (!h) return 0;
    Py_ssize_t nbins = SHAPE(h, 1);
    int ok = keep >= 0 && keep <= n_ap && n_hf >= 0 && SHAPE(v[0], 0) == n_lr && SHAPE(v[0], 1) == n_hf
             && SHAPE(v[1], 0) == n_lr && SHAPE(v[1], 1) == n_hf && SHAPE(v[2], 0) >= keep && SHAPE(v[2], 1) == n_hf
             && SHAPE(v[3], 0) >= keep && SHAPE(v[3], 1) == n_hf && SHAPE(lo_b, 0) == n_ap && SHAPE(hi_b, 0) == n_ap
             && SHAPE(h, 0) == n_ap && nbins >= 1;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "projection pass: the arrays' shapes do not agree");
        return 0;
    }
    t->n_lr = n_lr;
    t->n_hf = n_hf;
    t->keep = keep;
    t->nbins = nbins;
    t->cor_w = v[0]->buf;
    t->cor_f = v[1]->buf;
    t->sag_w = v[2]->buf;
    t->sag_f = v[3]->buf;
    t->lows = lo_b->buf;
    t->highs = hi_b->buf;
    t->hist = h->buf;
    t->lo = INFINITY;
    t->hi = -INFINITY;
    t->finite = 1;
    t->signal = malloc(sizeof(double) * (size_t)(n_lr * n_hf + 1));
    t->edges = malloc(sizeof(double) * (size_t)(nbins + 1));
    if (!t->signal || !t->edges) {
        free(t->signal);
        free(t->edges);
        t->signal = t->edges = NULL;
        PyErr_NoMemory();
        return 0;
    }
    return 1;
}

static void free_sums(SliceSums *t)
{
    free(t->signal);
    free(t->edges);
}

PyDoc_STRVAR(projection_pass_doc,
"projection_pass(water, fat, keep, cor_w, cor_f, sag_w, sag_f, lows, highs, hist) -> bool\n\n"
"One pass over both volumes (AP, LR, HF) float64, any strides: for every AP slice r the signal\n"
"s = water + fat (0 replaced by 1); lows[r], highs[r] get its min and max and hist[r] (int64,\n"
"nbins columns) its histogram over [min, max] with np.histogram's bin rule (left alone when\n"
"min == max). For r < keep the values are added to the coronal sums cor_* (LR, HF) and the\n"
"sagittal sums sag_* (keep, HF), which must start at zero. False when a signal is not finite.");

static PyObject *projection_pass(PyObject *self, PyObject *args)
{
    PyObject *o_w, *o_f, *o[7];
    Py_ssize_t keep;
    if (!PyArg_ParseTuple(args, "OOnOOOOOOO:projection_pass", &o_w, &o_f, &keep, &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6])) {
        return NULL;
    }
    Held held = {.n = 0};
    SliceSums t = {0};
    Py_buffer *w, *f;
    if (!take_volume_pair(&held, o_w, o_f, &w, &f)) {
        return fail(&held);
    }
    Py_ssize_t n_ap = SHAPE(w, 0), n_lr = SHAPE(w, 1), n_hf = SHAPE(w, 2);
    if (!take_sums(&held, o, n_ap, n_lr, n_hf, keep, &t)) {
        return fail(&held);
    }
    const double *wb = w->buf, *fb = f->buf;
    Py_ssize_t ws0 = ESTRIDE(w, 0), ws1 = ESTRIDE(w, 1), ws2 = ESTRIDE(w, 2);
    Py_ssize_t fs0 = ESTRIDE(f, 0), fs1 = ESTRIDE(f, 1), fs2 = ESTRIDE(f, 2);
    int finite = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n_ap && finite; r++) {
        for (Py_ssize_t c = 0; c < n_lr; c++) {
            add_line(&t, r, c, wb + r * ws0 + c * ws1, ws2, fb + r * fs0 + c * fs1, fs2);
        }
        finite = close_slice(&t, r);
    }
    Py_END_ALLOW_THREADS
    free_sums(&t);
    release_all(&held);
    return PyBool_FromLong(finite);
}

PyDoc_STRVAR(placed_projection_pass_doc,
"placed_projection_pass(buf_w, buf_f, offsets, shapes, starts, splits, n_rows, n_cols, n_slices, trim,\n"
"                       keep, cor_w, cor_f, sag_w, sag_f, lows, highs, hist) -> bool\n\n"
"projection_pass over the volumes paste_all would make from the placed water and fat stations\n"
"(rows = AP, cols = LR, slices = HF, slices trim .. n_slices - trim - 1), without making them:\n"
"each line is pasted into a scratch line and used at once.");

static PyObject *placed_projection_pass(PyObject *self, PyObject *args)
{
    PyObject *o_bw, *o_bf, *p_o[4], *o[7];
    Py_ssize_t n_rows, n_cols, n_slices, trim, keep;
    if (!PyArg_ParseTuple(args, "OOOOOOnnnnnOOOOOOO:placed_projection_pass", &o_bw, &o_bf, &p_o[0], &p_o[1],
                          &p_o[2], &p_o[3], &n_rows, &n_cols, &n_slices, &trim, &keep, &o[0], &o[1], &o[2],
                          &o[3], &o[4], &o[5], &o[6])) {
        return NULL;
    }
    Held held = {.n = 0};
    SliceSums t = {0};
    Placement p;
    const float *sw, *sf;
    if (!take_placed_pair(&held, o_bw, o_bf, p_o, n_rows, n_cols, n_slices, trim, &sw, &sf, &p)) {
        return fail(&held);
    }
    Py_ssize_t n_hf = n_slices - 2 * trim;
    if (!take_sums(&held, o, n_rows, n_cols, n_hf, keep, &t)) {
        return fail(&held);
    }
    double *lines = malloc(sizeof(double) * (size_t)(2 * n_slices + 2));
    if (!lines) {
        free_sums(&t);
        release_all(&held);
        return PyErr_NoMemory();
    }
    int finite = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n_rows && finite; r++) {
        for (Py_ssize_t c = 0; c < n_cols; c++) {
            paste_line(&p, sw, r, c, lines);
            paste_line(&p, sf, r, c, lines + n_slices);
            add_line(&t, r, c, lines + trim, 1, lines + n_slices + trim, 1);
        }
        finite = close_slice(&t, r);
    }
    Py_END_ALLOW_THREADS
    free(lines);
    free_sums(&t);
    release_all(&held);
    return PyBool_FromLong(finite);
}

/* ------------------------------------------------------------------ mask counts */

/* Body-mask voxels of one line: signal (water + fat, 0 replaced by 1) >= threshold. */
static inline int64_t count_line(const double *wl, Py_ssize_t ws, const double *fl, Py_ssize_t fs, Py_ssize_t n,
                                 double threshold)
{
    int64_t count = 0;
    for (Py_ssize_t z = 0; z < n; z++) {
        double s = wl[z * ws] + fl[z * fs];
        if (s == 0) {
            s = 1.0;
        }
        if (s >= threshold) {
            count += 1;
        }
    }
    return count;
}

static int take_counts(Held *held, PyObject *o_ap, PyObject *o_lr, Py_ssize_t n_ap, Py_ssize_t n_lr,
                       Py_ssize_t keep, int64_t **ap_out, int64_t **lr_out)
{
    Py_buffer *ap = take(held, o_ap, "counts_ap", I64, 1, 1, 1);
    if (!ap) return 0;
    Py_buffer *lr = take(held, o_lr, "counts_lr", I64, 1, 1, 1);
    if (!lr) return 0;
    if (keep < 0 || keep > n_ap || SHAPE(ap, 0) < keep || SHAPE(lr, 0) != n_lr) {
        PyErr_SetString(PyExc_ValueError, "mask_counts: the arrays' shapes do not agree");
        return 0;
    }
    *ap_out = ap->buf;
    *lr_out = lr->buf;
    return 1;
}

PyDoc_STRVAR(mask_counts_doc,
"mask_counts(water, fat, keep, threshold, counts_ap, counts_lr)\n\n"
"Body-mask voxels (signal >= threshold, signal = water + fat with 0 replaced by 1) per AP slice\n"
"(counts_ap, keep entries) and per LR slice (counts_lr), over AP slices < keep; water and fat\n"
"(AP, LR, HF) float64 with any strides; the int64 counts must start at zero.");

static PyObject *mask_counts(PyObject *self, PyObject *args)
{
    PyObject *o_w, *o_f, *o_ap, *o_lr;
    Py_ssize_t keep;
    double threshold;
    if (!PyArg_ParseTuple(args, "OOndOO:mask_counts", &o_w, &o_f, &keep, &threshold, &o_ap, &o_lr)) {
        return NULL;
    }
    Held held = {.n = 0};
    int64_t *counts_ap, *counts_lr;
    Py_buffer *w, *f;
    if (!take_volume_pair(&held, o_w, o_f, &w, &f)) {
        return fail(&held);
    }
    Py_ssize_t n_ap = SHAPE(w, 0), n_lr = SHAPE(w, 1), n_hf = SHAPE(w, 2);
    if (!take_counts(&held, o_ap, o_lr, n_ap, n_lr, keep, &counts_ap, &counts_lr)) {
        return fail(&held);
    }
    const double *wb = w->buf, *fb = f->buf;
    Py_ssize_t ws0 = ESTRIDE(w, 0), ws1 = ESTRIDE(w, 1), ws2 = ESTRIDE(w, 2);
    Py_ssize_t fs0 = ESTRIDE(f, 0), fs1 = ESTRIDE(f, 1), fs2 = ESTRIDE(f, 2);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < keep; r++) {
        for (Py_ssize_t c = 0; c < n_lr; c++) {
            int64_t n = count_line(wb + r * ws0 + c * ws1, ws2, fb + r * fs0 + c * fs1, fs2, n_hf, threshold);
            counts_ap[r] += n;
            counts_lr[c] += n;
        }
    }
    Py_END_ALLOW_THREADS
    release_all(&held);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(placed_mask_counts_doc,
"placed_mask_counts(buf_w, buf_f, offsets, shapes, starts, splits, n_rows, n_cols, n_slices, trim,\n"
"                   keep, threshold, counts_ap, counts_lr)\n\n"
"mask_counts over the volumes paste_all would make from the placed stations, without making them.");

static PyObject *placed_mask_counts(PyObject *self, PyObject *args)
{
    PyObject *o_bw, *o_bf, *p_o[4], *o_ap, *o_lr;
    Py_ssize_t n_rows, n_cols, n_slices, trim, keep;
    double threshold;
    if (!PyArg_ParseTuple(args, "OOOOOOnnnnndOO:placed_mask_counts", &o_bw, &o_bf, &p_o[0], &p_o[1], &p_o[2],
                          &p_o[3], &n_rows, &n_cols, &n_slices, &trim, &keep, &threshold, &o_ap, &o_lr)) {
        return NULL;
    }
    Held held = {.n = 0};
    Placement p;
    int64_t *counts_ap, *counts_lr;
    const float *sw, *sf;
    if (!take_placed_pair(&held, o_bw, o_bf, p_o, n_rows, n_cols, n_slices, trim, &sw, &sf, &p)
        || !take_counts(&held, o_ap, o_lr, n_rows, n_cols, keep, &counts_ap, &counts_lr)) {
        return fail(&held);
    }
    double *lines = malloc(sizeof(double) * (size_t)(2 * n_slices + 2));
    if (!lines) {
        release_all(&held);
        return PyErr_NoMemory();
    }
    Py_ssize_t n_hf = n_slices - 2 * trim;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < keep; r++) {
        for (Py_ssize_t c = 0; c < n_cols; c++) {
            paste_line(&p, sw, r, c, lines);
            paste_line(&p, sf, r, c, lines + n_slices);
            int64_t n = count_line(lines + trim, 1, lines + n_slices + trim, 1, n_hf, threshold);
            counts_ap[r] += n;
            counts_lr[c] += n;
        }
    }
    Py_END_ALLOW_THREADS
    free(lines);
    release_all(&held);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ stack_slices */

PyDoc_STRVAR(stack_slices_doc,
"stack_slices(slices, out)\n\n"
"np.stack(slices, axis=-1) into out: slices is a sequence of n float32 C-contiguous (rows, cols)\n"
"arrays, out a float32 C-contiguous (rows, cols, n) array. A blocked copy: 16 slices at a time,\n"
"so each pixel's 16 values are written as one run.");

#define STACK_BLOCK 16

static PyObject *stack_slices(PyObject *self, PyObject *args)
{
    PyObject *seq_obj, *o_out;
    if (!PyArg_ParseTuple(args, "OO:stack_slices", &seq_obj, &o_out)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(seq_obj, "slices must be a sequence of arrays");
    if (!seq) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Held held = {.n = 0};
    Py_buffer *out = take(&held, o_out, "out", F32, 3, 1, 1);
    Py_buffer *views = NULL;
    const float **src = NULL;
    Py_ssize_t taken = 0;
    PyObject *result = NULL;
    if (!out) goto done;
    Py_ssize_t rows = SHAPE(out, 0), cols = SHAPE(out, 1);
    if (SHAPE(out, 2) != n) {
        PyErr_Format(PyExc_ValueError, "out has %zd slices, %zd given", SHAPE(out, 2), n);
        goto done;
    }
    views = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    src = PyMem_Calloc((size_t)(n ? n : 1), sizeof(float *));
    if (!views || !src) {
        PyErr_NoMemory();
        goto done;
    }
    for (; taken < n; taken++) {
        Py_buffer *view = &views[taken];
        PyObject *item = PySequence_Fast_GET_ITEM(seq, taken);
        if (PyObject_GetBuffer(item, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "slice %zd is not a C-contiguous array", taken);
            goto done;
        }
        if (view->ndim != 2 || !kind_matches(view, F32) || view->shape[0] != rows || view->shape[1] != cols) {
            PyErr_Format(PyExc_ValueError, "slice %zd is not a float32 (%zd, %zd) array", taken, rows, cols);
            taken++;
            goto done;
        }
        src[taken] = view->buf;
    }
    float *dst = out->buf;
    Py_ssize_t pixels = rows * cols;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k0 = 0; k0 < n; k0 += STACK_BLOCK) {
        Py_ssize_t kb = n - k0 < STACK_BLOCK ? n - k0 : STACK_BLOCK;
        const float **s = src + k0;
        for (Py_ssize_t p = 0; p < pixels; p++) {
            float *d = dst + p * n + k0;
            for (Py_ssize_t t = 0; t < kb; t++) {
                d[t] = s[t][p];
            }
        }
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    if (views) {
        for (Py_ssize_t i = 0; i < taken; i++) {
            PyBuffer_Release(&views[i]);
        }
    }
    PyMem_Free(views);
    PyMem_Free(src);
    release_all(&held);
    Py_DECREF(seq);
    return result;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"resample_into", resample_into, METH_VARARGS, resample_into_doc},
    {"paste_all", paste_all, METH_VARARGS, paste_all_doc},
    {"linspace_edges", linspace_edges, METH_VARARGS, linspace_edges_doc},
    {"projection_pass", projection_pass, METH_VARARGS, projection_pass_doc},
    {"mask_counts", mask_counts, METH_VARARGS, mask_counts_doc},
    {"placed_lines", placed_lines, METH_VARARGS, placed_lines_doc},
    {"placed_projection_pass", placed_projection_pass, METH_VARARGS, placed_projection_pass_doc},
    {"placed_mask_counts", placed_mask_counts, METH_VARARGS, placed_mask_counts_doc},
    {"stack_slices", stack_slices, METH_VARARGS, stack_slices_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "mimir.preprocessing._kernels",
    "Compiled preprocessing loops; see mimir.preprocessing.kernels for the Python side.",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    return PyModule_Create(&module);
}
