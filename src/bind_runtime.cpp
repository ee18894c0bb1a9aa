#include "pybind11.hpp"
#include "vgcore/blas.hpp"

namespace vgcore::bind {

void bind_runtime(py::module_& m) {
  m.def("blas_set_num_threads", &blas::set_num_threads, py::arg("n"),
        "Set the number of threads of the BLAS that vgcore links (scipy-openblas32).");
  m.def("blas_get_num_threads", &blas::get_num_threads);
#ifdef VGCORE_VERSION
  m.attr("__version__") = VGCORE_VERSION;
#endif
}

}  // namespace vgcore::bind
