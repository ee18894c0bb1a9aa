// vgcore._core.testing: hooks that let the tests provoke failures the system rarely produces.
#include <string>

#include "pybind11.hpp"
#include "vgcore/base/control.hpp"

namespace vgcore::bind {

void bind_testing(py::module_& m) {
  auto t = m.def_submodule("testing", "Test hooks (internal): provoke rare failures on purpose.");
  t.def(
      "refuse_thread_starts",
      [](long n, long after) {
        if (n < 0 || after < 0)
          throw py::value_error("n and after must be >= 0, got n = " + std::to_string(n) +
                                ", after = " + std::to_string(after));
        auto& h = ThreadStartHook::instance();
        h.refuse.store(0);
        h.allow.store(after);
        h.refuse.store(n);
      },
      py::arg("n"), py::arg("after") = 0,
      "After `after` more thread starts, make the next n fail as if the system refused them "
      "(n = 0 resets).");
  t.def(
      "refused_thread_starts_left", [] { return ThreadStartHook::instance().refuse.load(); },
      "Refusals still pending.");
  t.def(
      "thread_start_attempts", [] { return ThreadStartHook::instance().attempts.load(); },
      "Threads vgcore has tried to start since the module was loaded.");
}

}  // namespace vgcore::bind
