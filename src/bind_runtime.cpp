#include "pybind11.hpp"
#include "vgcore/blas.hpp"
#include "vgcore/workspace.hpp"

namespace vgcore::bind {

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
#ifdef VGCORE_VERSION
  m.attr("__version__") = VGCORE_VERSION;
#endif
}

}  // namespace vgcore::bind
