// Runtime settings of the compiled core: threads, scratch memory, the BLAS's speed.
#include <new>
#include <string>

#include "pybind11.hpp"
#include "vgcore/base/blas.hpp"
#include "vgcore/base/control.hpp"
#include "vgcore/base/gemm_timing.hpp"
#include "vgcore/base/workspace.hpp"

namespace vgcore::bind {

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
  m.def(
      "workspace_set_limit", [](std::size_t bytes) { WorkspacePool::instance().set_limit(bytes); },
      py::arg("bytes"));
  m.def(
      "blas_gemm_gflops",
      [](std::size_t m, std::size_t n, std::size_t k, bool float64, int repeat) {
        if (m == 0 || n == 0 || k == 0 || repeat < 1)
          throw py::value_error(
              "m, n, k and repeat must be positive, got m = " + std::to_string(m) +
              ", n = " + std::to_string(n) + ", k = " + std::to_string(k) +
              ", repeat = " + std::to_string(repeat));
        py::gil_scoped_release release;
        return blas_gemm_gflops(m, n, k, float64, repeat);
      },
      py::arg("m"), py::arg("n"), py::arg("k"), py::arg("float64") = false, py::arg("repeat") = 5,
      "Best GFLOP/s of an m x k by k x n GEMM through vgcore's BLAS at its current thread count.");
#ifdef VGCORE_VERSION
  m.attr("__version__") = VGCORE_VERSION;
#endif
}

}  // namespace vgcore::bind
