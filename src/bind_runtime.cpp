#include <algorithm>
#include <chrono>
#include <new>
#include <string>
#include <vector>

#include "pybind11.hpp"
#include "vgcore/base/blas.hpp"
#include "vgcore/base/control.hpp"
#include "vgcore/base/packed_gemm.hpp"
#include "vgcore/base/workspace.hpp"

namespace vgcore::bind {
namespace {

// a (m, k) @ B, B = b (k, n) or b.T for b (n, k) when transposed; + c when c is given.
template <class T>
py::array_t<T> packed_product(const py::array& a, const py::array& b, bool transposed,
                              const py::object& c) {
  if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("a and b must be 2-d");
  const auto m = a.shape(0), k = a.shape(1);
  const auto n = transposed ? b.shape(0) : b.shape(1);
  const T* pa = require<T>(a, "a", {m, k});
  const T* pb = require<T>(
      b, "b", transposed ? std::vector<py::ssize_t>{n, k} : std::vector<py::ssize_t>{k, n});
  py::array_t<T> out({m, n});
  T beta = T(0);
  if (!c.is_none()) {
    const T* pc = require<T>(c.cast<py::array>(), "c", {m, n});
    std::copy(pc, pc + m * n, out.mutable_data());
    beta = T(1);
  }
  const auto pm =
      transposed ? PackedMatrix<T>::transposed(pb, n, k, k) : PackedMatrix<T>::rows(pb, k, n, n);
  gemm_packed<T>(m, pa, k, pm, beta, out.mutable_data(), n);
  return out;
}

// Best-of-`repeat` GFLOP/s of C = A B (m x k by k x n, row-major) through the BLAS vgcore
// links, at its current thread count: the machine's own limit for the benchmarks.
template <class T>
double gemm_gflops(std::size_t m, std::size_t n, std::size_t k, int repeat) {
  std::vector<T> a(m * k, T(0.5)), b(k * n, T(0.25)), c(m * n, T(0));
  double best = 1e300;
  py::gil_scoped_release release;
  for (int r = 0; r < repeat + 1; ++r) {  // the first run warms up
    const auto t0 = std::chrono::steady_clock::now();
    blas::gemm(blas::Op::N, blas::Op::N, m, n, k, T(1), a.data(), k, b.data(), n, T(0), c.data(),
               n);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::min(best, dt);
  }
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / best /
         1e9;
}

}  // namespace

void bind_runtime(py::module_& m) {
  // A failed allocation inside the core (or one of its worker threads) is a MemoryError that
  // says what to change, rather than pybind11's bare "std::bad_alloc".
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError,
                      "vgcore could not allocate its working memory (std::bad_alloc): reduce the "
                      "batch, the sequence length or the width");
    }
  });
  m.attr("MAX_THREADS") = kMaxThreads;
  m.def(
      "blas_set_num_threads",
      [](long n) {
        if (n < 1 || n > kMaxThreads)
          throw py::value_error("n must be between 1 and " + std::to_string(kMaxThreads) +
                                ", got " + std::to_string(n));
        blas::set_num_threads(static_cast<int>(n));
      },
      py::arg("n"), "Set the number of threads of the BLAS that vgcore links (scipy-openblas32).");
  m.def("blas_get_num_threads", &blas::get_num_threads);
  m.def(
      "workspace_release", [] { return WorkspacePool::instance().clear(); },
      "Free the cached scratch memory; returns the number of bytes released.");
  m.def("workspace_cached", [] { return WorkspacePool::instance().cached(); });
  m.def(
      "workspace_set_limit", [](std::size_t bytes) { WorkspacePool::instance().set_limit(bytes); },
      py::arg("bytes"));
  m.def("workspace_limit", [] { return WorkspacePool::instance().limit(); });
  m.def(
      "packed_product",
      [](const py::array& a, const py::array& b, bool transposed,
         const py::object& c) -> py::object {
        if (has_dtype<float>(a)) return packed_product<float>(a, b, transposed, c);
        return packed_product<double>(a, b, transposed, c);
      },
      py::arg("a"), py::arg("b"), py::arg("transposed"), py::arg("c") = py::none(),
      "a @ b (or a @ b.T) + c through the packed-panel GEMM (test hook).");
  m.def("packed_gemm_available", &packed_gemm_available);
  m.def(
      "blas_gemm_gflops",
      [](std::size_t m, std::size_t n, std::size_t k, bool float64, int repeat) {
        if (m == 0 || n == 0 || k == 0 || repeat < 1)
          throw py::value_error("m, n, k and repeat must be positive");
        return float64 ? gemm_gflops<double>(m, n, k, repeat) : gemm_gflops<float>(m, n, k, repeat);
      },
      py::arg("m"), py::arg("n"), py::arg("k"), py::arg("float64") = false, py::arg("repeat") = 5,
      "Best GFLOP/s of an m x k by k x n GEMM through vgcore's BLAS at its current thread count.");
#ifdef VGCORE_VERSION
  m.attr("__version__") = VGCORE_VERSION;
#endif
}

}  // namespace vgcore::bind
