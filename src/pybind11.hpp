// The one pybind11 include every binding translation unit uses, plus the small helpers
// shared by all bindings: array checks with readable errors, and the Control adapter that
// turns Ctrl-C / a Python progress callback into the core's cancellation mechanism.
#pragma once

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "vgcore/base/control.hpp"

namespace vgcore::bind {

namespace py = pybind11;

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

// Whether a has dtype T. By equivalence, not identity: equal dtypes need not be the same
// object (an array unpickled or received from another process has its own float64 dtype).
template <class T>
bool has_dtype(const py::array& a) {
  return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<T>().ptr());
}

// Require a C-contiguous array of dtype T with the given shape (-1 = any).
template <class T>
const T* require(const py::array& a, const char* name, std::vector<py::ssize_t> shape) {
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + " must have dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
  if (!ok) {
    std::string want = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
      if (i) want += ", ";
      want += shape[i] < 0 ? std::string("*") : std::to_string(shape[i]);
    }
    if (shape.size() == 1) want += ",";
    want += ")";
    throw py::value_error(std::string(name) + " must have shape " + want + ", got " + shape_str(a));
  }
  return static_cast<const T*>(a.data());
}

// o itself as a numpy array, never a converted copy: the core keeps pointers into it, which a
// temporary would not outlive. TypeError naming `name` for anything else.
inline py::array as_ndarray(const py::handle& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + " must be a numpy array, got " +
                         Py_TYPE(o.ptr())->tp_name);
  return py::reinterpret_borrow<py::array>(o);
}

template <class T>
const T* optional_array(const py::object& o, const char* name, std::vector<py::ssize_t> shape) {
  if (o.is_none()) return nullptr;
  return require<T>(as_ndarray(o, name), name, std::move(shape));
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// v as an array of the given shape (v.size() must be its product).
template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> a(std::move(shape));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// A Control that checks for Ctrl-C and calls `progress(done, total)` (if not None) about
// every 0.1 s, holding the GIL only for that moment; not before a total is known (a check
// between blocks of a call's first phase only looks for Ctrl-C). Must be created with the GIL
// held.
inline Control make_control(const py::object& progress) {
  const py::object* cb = &progress;
  return Control(
      [cb](std::size_t done, std::size_t total) {
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        if (total > 0 && !cb->is_none()) (*cb)(done, total);
      },
      0.1);
}

}  // namespace vgcore::bind
