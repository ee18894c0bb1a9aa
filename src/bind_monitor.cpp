// The training monitor's one-pass sums (vgcore.watch): parameters before and after an optimizer
// step, rectifier outputs. Arrays come as lists (one call per logged step, one GIL release).
#include <algorithm>
#include <string>
#include <vector>

#include "pybind11.hpp"
#include "vgcore/base/array_sums.hpp"
#include "vgcore/base/control.hpp"  // kMaxThreads

namespace vgcore::bind {
namespace {

// One entry of a list argument: numpy array, C-contiguous, float32 or float64.
struct Item {
  const void* data = nullptr;
  std::size_t n = 0;
  bool f32 = false;
};

Item item(const py::handle& o, const std::string& name) {
  const py::array a = as_ndarray(o, name.c_str());
  const bool f32 = has_dtype<float>(a);
  if (!f32 && !has_dtype<double>(a))
    throw py::type_error(name + " must have dtype float32 or float64, got " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(name + " must be C-contiguous");
  return {a.data(), static_cast<std::size_t>(a.size()), f32};
}

// An optional entry matching x in dtype and size (None: absent).
Item matching(const py::handle& o, const Item& x, const std::string& name, bool writeable) {
  if (o.is_none()) return {};
  const Item it = item(o, name);
  if (it.f32 != x.f32 || it.n != x.n)
    throw py::value_error(name + " must match its parameter's dtype and size (" +
                          std::to_string(x.n) + " entries)");
  if (writeable && !py::reinterpret_borrow<py::array>(o).writeable())
    throw py::value_error(name + " must be writeable");
  return it;
}

std::string at(const char* name, std::size_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

std::size_t thread_count(int threads) {
  if (threads < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(threads));
  return static_cast<std::size_t>(std::min(threads, kMaxThreads));
}

py::array_t<double> snapshot(const py::list& xs, const py::list& gs, const py::list& copies,
                             int threads) {
  const std::size_t n = xs.size();
  if (gs.size() != n || copies.size() != n)
    throw py::value_error("xs, gs and copies must have the same length, got " + std::to_string(n) +
                          ", " + std::to_string(gs.size()) + ", " + std::to_string(copies.size()));
  const std::size_t nt = thread_count(threads);
  std::vector<SumsItem> items(n);
  for (std::size_t i = 0; i < n; ++i) {
    const Item x = item(xs[i], at("xs", i));
    const Item g = matching(gs[i], x, at("gs", i), false);
    const Item c = matching(copies[i], x, at("copies", i), true);
    items[i] = {x.data, g.data, const_cast<void*>(c.data), x.n, x.f32};
  }
  py::array_t<double> out({static_cast<py::ssize_t>(n), py::ssize_t{2}});
  double* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    snapshot_sums_batch(items.data(), n, o, nt);
  }
  return out;
}

py::array_t<double> difference(const py::list& as, const py::list& bs, int threads) {
  const std::size_t n = as.size();
  if (bs.size() != n)
    throw py::value_error("a and b must have the same length, got " + std::to_string(n) + " and " +
                          std::to_string(bs.size()));
  const std::size_t nt = thread_count(threads);
  std::vector<SumsItem> items(n);
  for (std::size_t i = 0; i < n; ++i) {
    const Item a = item(as[i], at("a", i));
    const Item b = matching(bs[i], a, at("b", i), false);
    if (b.data == nullptr) throw py::type_error(at("b", i) + " must be a numpy array, got None");
    items[i] = {a.data, b.data, nullptr, a.n, a.f32};
  }
  py::array_t<double> out(static_cast<py::ssize_t>(n));
  double* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    difference_sums_batch(items.data(), n, o, nt);
  }
  return out;
}

template <class T>
py::tuple rectifier_impl(const py::array& y) {
  const std::size_t rows = static_cast<std::size_t>(y.shape(0));
  const std::size_t cols = rows ? static_cast<std::size_t>(y.size()) / rows : 0;
  py::array_t<T> colsum(static_cast<py::ssize_t>(cols));
  T* cs = colsum.mutable_data();
  const T* yp = static_cast<const T*>(y.data());
  RectifierSums s;
  {
    py::gil_scoped_release release;
    std::fill(cs, cs + cols, T(0));
    s = rectifier_sums(yp, rows, cols, cs);
  }
  return py::make_tuple(s.sum, s.sum2, s.active, colsum);
}

py::tuple rectifier(const py::object& y_in) {
  const Item y = item(y_in, "y");
  const py::array a = py::reinterpret_borrow<py::array>(y_in);
  if (a.ndim() < 2)
    throw py::value_error("y must have at least 2 dimensions (batch first), got shape " +
                          shape_str(a));
  return y.f32 ? rectifier_impl<float>(a) : rectifier_impl<double>(a);
}

}  // namespace

void bind_monitor(py::module_& m) {
  m.def("snapshot_sums", &snapshot, py::arg("xs"), py::arg("gs"), py::arg("copies"),
        py::arg("threads") = 1,
        "Per array of xs: (sum x^2, sum g^2) as rows of a (len(xs), 2) float64 array, one pass "
        "each; x copied into copies[i] in the same pass. gs[i], copies[i] may be None. Up to "
        "`threads` threads share the arrays' blocks; the sums do not depend on their number.");
  m.def("difference_sums", &difference, py::arg("a"), py::arg("b"), py::arg("threads") = 1,
        "Per pair: sum (a_i - b_i)^2, each difference formed in float64; `threads` as for "
        "snapshot_sums.");
  m.def("rectifier_sums", &rectifier, py::arg("y"),
        "(sum y, sum y^2, number of entries > 0, per-unit sums over the batch in y's dtype) of "
        "a batch-first array y (at least 2-D), in one pass.");
}

}  // namespace vgcore::bind
