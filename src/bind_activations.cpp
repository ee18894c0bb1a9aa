#include "pybind11.hpp"
#include "vgcore/base/activations.hpp"

namespace vgcore::bind {
namespace {

template <class T>
py::tuple activation_impl(const Activation& act, const py::array& z) {
  const T* zp = require<T>(z, "z", std::vector<py::ssize_t>(z.ndim(), -1));
  std::vector<py::ssize_t> shape(z.shape(), z.shape() + z.ndim());
  py::array_t<T> y(shape), dy(shape);
  {
    py::gil_scoped_release release;
    activation_forward(act, zp, y.mutable_data(), dy.mutable_data(),
                       static_cast<std::size_t>(z.size()));
  }
  return py::make_tuple(y, dy);
}

}  // namespace

void bind_activations(py::module_& m) {
  m.def(
      "activation",
      [](const std::string& name, double alpha, double beta, const py::array& z) {
        const Activation act = make_activation(name, alpha, beta);
        if (has_dtype<float>(z)) return activation_impl<float>(act, z);
        return activation_impl<double>(act, z);
      },
      py::arg("name"), py::arg("alpha"), py::arg("beta"), py::arg("z"),
      "(phi(z), phi'(z)) for a named activation; alpha/beta NaN mean PyTorch defaults.");
  m.def(
      "activation_info",
      [](const std::string& name, double alpha, double beta) {
        const Activation act = make_activation(name, alpha, beta);
        py::dict d;
        d["name"] = activation_name(act.kind);
        d["alpha"] = act.alpha;
        d["beta"] = act.beta;
        d["max_derivative"] = act.max_derivative();
        d["is_linear"] = act.is_linear();
        return d;
      },
      py::arg("name"), py::arg("alpha"), py::arg("beta"));
}

}  // namespace vgcore::bind
