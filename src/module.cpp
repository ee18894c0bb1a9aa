// Entry point of vgcore._core: it only delegates to one bind_<area>.cpp per area.
#include "pybind11.hpp"

namespace vgcore::bind {
void bind_runtime(py::module_& m);
void bind_activations(py::module_& m);
void bind_monitor(py::module_& m);
void bind_flow(py::module_& m);
void bind_spectra(py::module_& m);
void bind_testing(py::module_& m);
}  // namespace vgcore::bind

PYBIND11_MODULE(_core, m) {
  m.doc() = "vgcore compiled core (internal; use the vgcore package API)";
  vgcore::bind::bind_runtime(m);
  vgcore::bind::bind_activations(m);
  vgcore::bind::bind_monitor(m);
  vgcore::bind::bind_flow(m);
  vgcore::bind::bind_spectra(m);
  vgcore::bind::bind_testing(m);
}
