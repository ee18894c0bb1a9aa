#include "pybind11.hpp"
#include "vgcore/blas.hpp"
#include "vgcore/packed_gemm.hpp"
#include "vgcore/workspace.hpp"

namespace vgcore::bind {
namespace {

// a (m, k) @ B, B = b (k, n) or b.T for b (n, k) when transposed; + c when c is given.
template <class T>
py::array_t<T> packed_product(const py::array& a, const py::array& b, bool transposed, const py::object& c) {
  if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("a and b must be 2-d");
  const auto m = a.shape(0), k = a.shape(1);
  const auto n = transposed ? b.shape(0) : b.shape(1);
  const T* pa = require<T>(a, "a", {m, k});
  const T* pb = require<T>(b, "b", transposed ? std::vector<py::ssize_t>{n, k} : std::vector<py::ssize_t>{k, n});
  py::array_t<T> out({m, n});
  T beta = T(0);
  if (!c.is_none()) {
    const T* pc = require<T>(c.cast<py::array>(), "c", {m, n});
    std::copy(pc, pc + m * n, out.mutable_data());
    beta = T(1);
  }
  const auto pm = transposed ? PackedMatrix<T>::transposed(pb, n, k, k) : PackedMatrix<T>::rows(pb, k, n, n);
  gemm_packed<T>(m, pa, k, pm, beta, out.mutable_data(), n);
  return out;
}

}  // namespace

void bind_runtime(py::module_& m) {
  m.def("blas_set_num_threads", &blas::set_num_threads, py::arg("n"),
        "Set the number of threads of the BLAS that vgcore links (scipy-openblas32).");
  m.def("blas_get_num_threads", &blas::get_num_threads);
  m.def("workspace_release", [] { return WorkspacePool::instance().clear(); },
        "Free the cached scratch memory; returns the number of bytes released.");
  m.def("workspace_cached", [] { return WorkspacePool::instance().cached(); });
  m.def("workspace_set_limit", [](std::size_t bytes) { WorkspacePool::instance().set_limit(bytes); },
        py::arg("bytes"));
  m.def("workspace_limit", [] { return WorkspacePool::instance().limit(); });
  m.def(
      "packed_product",
      [](const py::array& a, const py::array& b, bool transposed, const py::object& c) -> py::object {
        if (a.dtype().is(py::dtype::of<float>())) return packed_product<float>(a, b, transposed, c);
        return packed_product<double>(a, b, transposed, c);
      },
      py::arg("a"), py::arg("b"), py::arg("transposed"), py::arg("c") = py::none(),
      "a @ b (or a @ b.T) + c through the packed-panel GEMM (test hook).");
  m.def("packed_gemm_available", &packed_gemm_available);
#ifdef VGCORE_VERSION
  m.attr("__version__") = VGCORE_VERSION;
#endif
}

}  // namespace vgcore::bind
