// The hot loop of stac_codec.logit_labels (its chain, checks and tap tables live there, in
// Python): class ids of a frame from low-resolution logits, through separable per-axis taps
// (each output row / column a short run of low-resolution rows / columns with weights), the
// argmax taken with the lowest class id winning a tie, as torch's argmax.
//
// Why C++: the float tail (upsampling K logit planes to the frame, then an argmax over them) is
// a third of an int8 forward on a CPU; here most pixels cost a few byte comparisons. A pixel
// whose whole support (every low-resolution pixel with a weight in it) has the same argmax
// takes that class: the interpolated logits are a convex combination of the support's, so the
// class that is highest (and, against lower ids, strictly highest) at each of them stays so.
// Elsewhere all K interpolated logits are computed (a class second everywhere can win in the
// mix) from the rows interpolated once per output row, for the columns needed only.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

namespace {

constexpr int16_t kMixed = -1;

struct Taps {
  const int32_t* start;   // first low-resolution index of each output index
  const int32_t* count;   // how many low-resolution indices (1..width)
  const float* weights;   // out x width, the first `count` of each row used
  int width;
};

void class_ids(const float* logits, int classes, int low_height, int low_width, const Taps& rows,
               const Taps& cols, int height, int width, uint8_t* out) {
  const size_t plane = static_cast<size_t>(low_height) * low_width;
  // the logits pixel-major (each pixel's K contiguous) and each pixel's argmax, the lowest id
  // on a tie
  std::vector<float> pixels(plane * classes);
  std::vector<uint8_t> low_labels(plane);
  for (int k = 0; k < classes; ++k)
    for (size_t p = 0; p < plane; ++p) pixels[p * classes + k] = logits[k * plane + p];
  for (size_t p = 0; p < plane; ++p) {
    const float* v = &pixels[p * classes];
    int best = 0;
    for (int k = 1; k < classes; ++k)
      if (v[k] > v[best]) best = k;
    low_labels[p] = static_cast<uint8_t>(best);
  }
  // Per run of output rows with the same row support: each low-resolution column's class if
  // every row of the support agrees on it (else kMixed), from which the output row's uniform
  // pixels (the same for the whole run) and the list of the others. Those are computed per row
  // from the logits interpolated along the rows, for the columns they need only
  // (`vertical_row[c]`: the output row the column was last interpolated for).
  std::vector<int16_t> column_label(low_width);
  std::vector<uint8_t> uniform_row(width);
  std::vector<int> mixed_x;
  std::vector<float> vertical(static_cast<size_t>(low_width) * classes);
  std::vector<int> vertical_row(low_width, -1);
  float mixed[256];
  int support_start = -1, support_count = -1;
  for (int y = 0; y < height; ++y) {
    const int r0 = rows.start[y], rn = rows.count[y];
    if (r0 != support_start || rn != support_count) {
      support_start = r0;
      support_count = rn;
      for (int c = 0; c < low_width; ++c) {
        const uint8_t first = low_labels[static_cast<size_t>(r0) * low_width + c];
        int16_t label = first;
        for (int r = 1; r < rn; ++r)
          if (low_labels[static_cast<size_t>(r0 + r) * low_width + c] != first) label = kMixed;
        column_label[c] = label;
      }
      mixed_x.clear();
      for (int x = 0; x < width; ++x) {
        const int c0 = cols.start[x], cn = cols.count[x];
        const int16_t label = column_label[c0];
        bool uniform = label != kMixed;
        for (int c = 1; uniform && c < cn; ++c) uniform = column_label[c0 + c] == label;
        uniform_row[x] = uniform ? static_cast<uint8_t>(label) : 0;
        if (!uniform) mixed_x.push_back(x);
      }
    }
    uint8_t* row_out = out + static_cast<size_t>(y) * width;
    std::memcpy(row_out, uniform_row.data(), width);
    const float* rw = rows.weights + static_cast<size_t>(y) * rows.width;
    for (const int x : mixed_x) {
      const int c0 = cols.start[x], cn = cols.count[x];
      for (int c = c0; c < c0 + cn; ++c) {
        if (vertical_row[c] == y) continue;
        vertical_row[c] = y;
        float* v = &vertical[static_cast<size_t>(c) * classes];
        const float* p = &pixels[(static_cast<size_t>(r0) * low_width + c) * classes];
        for (int k = 0; k < classes; ++k) v[k] = rw[0] * p[k];
        for (int r = 1; r < rn; ++r) {
          p += static_cast<size_t>(low_width) * classes;
          for (int k = 0; k < classes; ++k) v[k] += rw[r] * p[k];
        }
      }
      const float* cw = cols.weights + static_cast<size_t>(x) * cols.width;
      const float* v = &vertical[static_cast<size_t>(c0) * classes];
      for (int k = 0; k < classes; ++k) mixed[k] = cw[0] * v[k];
      for (int j = 1; j < cn; ++j) {
        v += classes;
        for (int k = 0; k < classes; ++k) mixed[k] += cw[j] * v[k];
      }
      int best = 0;
      for (int k = 1; k < classes; ++k)
        if (mixed[k] > mixed[best]) best = k;
      row_out[x] = static_cast<uint8_t>(best);
    }
  }
}

// --- Python ---------------------------------------------------------------------------------

class Buffer {
 public:
  ~Buffer() {
    if (held_) PyBuffer_Release(&view_);
  }
  // A C-contiguous buffer of exactly `size` bytes (`writable`: one to write to).
  bool get(PyObject* object, const char* name, Py_ssize_t size, bool writable = false) {
    const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, &view_, flags) != 0) return false;
    held_ = true;
    if (view_.len != size) {
      PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", name, view_.len, size);
      return false;
    }
    return true;
  }
  void* data() const { return view_.buf; }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

// The tap table of one axis, checked so that no index leaves the low-resolution axis.
bool get_taps(PyObject* start_object, PyObject* count_object, PyObject* weights_object,
              int taps_width, int out_size, int low_size, const char* axis, Buffer& start,
              Buffer& count, Buffer& weights, Taps& taps) {
  if (taps_width < 1 || taps_width > low_size) {
    PyErr_Format(PyExc_ValueError, "%s: %d taps a row for %d low-resolution indices", axis,
                 taps_width, low_size);
    return false;
  }
  if (!start.get(start_object, "start", static_cast<Py_ssize_t>(out_size) * 4) ||
      !count.get(count_object, "count", static_cast<Py_ssize_t>(out_size) * 4) ||
      !weights.get(weights_object, "weights",
                   static_cast<Py_ssize_t>(out_size) * taps_width * 4))
    return false;
  taps = {static_cast<const int32_t*>(start.data()), static_cast<const int32_t*>(count.data()),
          static_cast<const float*>(weights.data()), taps_width};
  for (int i = 0; i < out_size; ++i) {
    const int32_t s = taps.start[i], n = taps.count[i];
    if (s < 0 || n < 1 || n > taps_width || s + n > low_size) {
      PyErr_Format(PyExc_ValueError, "%s tap %d: start %d, count %d outside %d indices", axis,
                   i, s, n, low_size);
      return false;
    }
  }
  return true;
}

PyObject* class_ids_py(PyObject*, PyObject* args) {
  PyObject *logits_object, *row_start, *row_count, *row_weights, *col_start, *col_count,
      *col_weights, *out_object;
  int classes, low_height, low_width, height, width, row_taps, col_taps;
  if (!PyArg_ParseTuple(args, "OiiiOOOiiOOOiiO", &logits_object, &classes, &low_height,
                        &low_width, &row_start, &row_count, &row_weights, &row_taps, &height,
                        &col_start, &col_count, &col_weights, &col_taps, &width, &out_object))
    return nullptr;
  if (classes < 1 || classes > 256)
    return PyErr_Format(PyExc_ValueError, "%d classes: class ids hold 1..256", classes);
  for (int side : {low_height, low_width, height, width})
    if (side < 1 || side > 16384)
      return PyErr_Format(PyExc_ValueError, "a side of %d is outside 1..16384", side);
  Buffer logits, rs, rc, rw, cs, cc, cw, out;
  Taps rows{}, cols{};
  if (!logits.get(logits_object, "logits",
                  static_cast<Py_ssize_t>(classes) * low_height * low_width * 4) ||
      !get_taps(row_start, row_count, row_weights, row_taps, height, low_height, "rows", rs, rc,
                rw, rows) ||
      !get_taps(col_start, col_count, col_weights, col_taps, width, low_width, "columns", cs, cc,
                cw, cols) ||
      !out.get(out_object, "out", static_cast<Py_ssize_t>(height) * width, true))
    return nullptr;
  const float* data = static_cast<const float*>(logits.data());
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    class_ids(data, classes, low_height, low_width, rows, cols, height, width,
              static_cast<uint8_t*>(out.data()));
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS;
  if (out_of_memory) return PyErr_NoMemory();
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"class_ids", class_ids_py, METH_VARARGS,
     "class_ids(logits, classes, low_height, low_width, row_start, row_count, row_weights, "
     "row_taps, height, col_start, col_count, col_weights, col_taps, width, out): writes the "
     "height x width uint8 class ids into `out` of float32 classes x low_height x low_width logits through "
     "per-axis taps (int32 start and count per output index, float32 weights out x taps)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT,
                       "_logit_labels",
                       "Class ids from low-resolution logits through separable bilinear taps.",
                       -1,
                       kMethods,
                       nullptr,
                       nullptr,
                       nullptr,
                       nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__logit_labels() { return PyModule_Create(&kModule); }
