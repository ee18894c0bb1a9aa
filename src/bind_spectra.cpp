// Bindings for Jacobian spectra, Lyapunov exponents and singular values of Jacobian products:
// parse the model description (convert.hpp), validate, dispatch on float32 / float64, release
// the GIL, call the core. The core keeps pointers into the description's arrays, so objects
// that outlive the call (the Lyapunov engine) keep the dict alive.
#include <memory>
#include <variant>

#include "convert.hpp"
#include "pybind11.hpp"
#include "vgcore/analysis/lyapunov.hpp"
#include "vgcore/analysis/singular.hpp"
#include "vgcore/analysis/spectrum.hpp"

namespace vgcore::bind {
namespace {

// Inputs of a whole-sequence analysis: recurrent x (T, B, I) or dense x (B, in).
template <class T>
struct Inputs {
  const T* x = nullptr;
  const T* h0 = nullptr;
  std::size_t steps = 0, batch = 0;
};

template <class T>
Inputs<T> inputs(const Model<T>& m, const py::array& x, const py::object& h0) {
  Inputs<T> in;
  if (m.is_dense()) {
    in.x = require<T>(x, "x", {-1, static_cast<py::ssize_t>(m.in_dim(0))});
    in.batch = static_cast<std::size_t>(x.shape(0));
    in.steps = m.n_layers();
  } else {
    in.x = require<T>(x, "x", {-1, -1, static_cast<py::ssize_t>(m.input_size())});
    in.steps = static_cast<std::size_t>(x.shape(0));
    in.batch = static_cast<std::size_t>(x.shape(1));
    in.h0 = optional_array<T>(h0, "h0", {x.shape(1), static_cast<py::ssize_t>(m.in_dim(0))});
  }
  return in;
}

// ---- spectrum -------------------------------------------------------------------------------

template <class T>
py::dict spectrum_impl(const py::dict& model, const py::array& x, const py::object& h0,
                       const std::vector<std::size_t>& which, const SpectrumOptions& opt,
                       const py::object& progress) {
  const Model<T> m = parse_model<T>(model);
  const Inputs<T> in = inputs(m, x, h0);
  Control ctl = make_control(progress);
  SpectrumResult r;
  try {
    py::gil_scoped_release release;
    r = jacobian_spectrum(m, in.x, in.steps, in.batch, in.h0, which, opt, ctl);
  } catch (const std::bad_alloc&) {  // the GIL is held again here: a MemoryError that says where
    PyErr_SetString(PyExc_MemoryError,
                    "jacobian_spectrum ran out of memory (std::bad_alloc); reduce the batch, the "
                    "selected steps (which) or the width");
    throw py::error_already_set();
  }
  const std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(which.size()),
                                       static_cast<py::ssize_t>(in.batch)};
  py::dict d;
  d["spectral_radius"] = to_numpy(r.radius, shape);
  d["sigma_max"] = to_numpy(r.sigma, shape);
  d["log_spectral_radius"] = to_numpy(r.log_radius, shape);
  d["log_sigma_max"] = to_numpy(r.log_sigma, shape);
  d["radius_residual"] = to_numpy(r.radius_residual, shape);
  d["sigma_residual"] = to_numpy(r.sigma_residual, shape);
  d["radius_condition"] = to_numpy(r.radius_condition, shape);
  d["radius_error"] = to_numpy(r.radius_error, shape);
  d["sigma_error"] = to_numpy(r.sigma_error, shape);
  d["radius_iterations"] = to_numpy(r.radius_iterations, shape);
  d["sigma_iterations"] = to_numpy(r.sigma_iterations, shape);
  d["converged"] = to_numpy(r.converged, shape);
  d["reliable"] = to_numpy(r.reliable, shape);
  d["radius_fallback"] = to_numpy(r.radius_fallback, shape);
  d["sigma_fallback"] = to_numpy(r.sigma_fallback, shape);
  return d;
}

// ---- singular values --------------------------------------------------------------------

template <class T>
py::dict singular_impl(const py::dict& model, const py::array& x, const py::object& h0,
                       int num_threads, const py::object& progress) {
  const Model<T> m = parse_model<T>(model);
  const Inputs<T> in = inputs(m, x, h0);
  SingularOptions opt;
  opt.num_threads = num_threads;
  Control ctl = make_control(progress);
  SingularResult r;
  {
    py::gil_scoped_release release;
    r = jacobian_log_singular_values(m, in.x, in.steps, in.batch, in.h0, opt, ctl);
  }
  py::dict d;
  d["log_singular_values"] = to_numpy(
      r.log_singular, {static_cast<py::ssize_t>(in.batch), static_cast<py::ssize_t>(r.rank)});
  d["jacobi_sweeps"] = to_numpy(r.jacobi_sweeps, {static_cast<py::ssize_t>(in.batch)});
  return d;
}

// ---- Lyapunov engine --------------------------------------------------------------------

class PyLyapunov {
 public:
  PyLyapunov(const py::dict& model, const py::array& h0, const py::array& v0, std::size_t burn_in,
             std::size_t qr_every, std::size_t max_records, int num_threads)
      : model_(model) {
    if (is_float32(model))
      init<float>(h0, v0, burn_in, qr_every, max_records, num_threads);
    else
      init<double>(h0, v0, burn_in, qr_every, max_records, num_threads);
  }

  void feed(const py::object& x, std::size_t total_hint, const py::object& progress) {
    std::visit([&](auto& e) { feed_impl(*e, x, total_hint, progress); }, engine_);
  }

  py::dict result() {
    return std::visit([&](auto& e) { return result_impl(*e); }, engine_);
  }

 private:
  template <class T>
  void init(const py::array& h0, const py::array& v0, std::size_t burn_in, std::size_t qr_every,
            std::size_t max_records, int num_threads) {
    Model<T> m = parse_model<T>(model_);
    const auto D = static_cast<py::ssize_t>(m.in_dim(0));
    const T* hp = require<T>(h0, "h0", {-1, D});
    const T* vp = require<T>(v0, "v0", {h0.shape(0), -1, D});
    LyapunovOptions o;
    o.k = static_cast<std::size_t>(v0.shape(1));
    o.burn_in = burn_in;
    o.qr_every = qr_every;
    o.max_records = max_records;
    o.num_threads = num_threads;
    dense_ = m.is_dense();
    dense_steps_ = dense_ ? m.n_layers() : 0;
    input_size_ = dense_ ? 0 : static_cast<py::ssize_t>(m.input_size());
    engine_ = std::make_unique<LyapunovEngine<T>>(std::move(m),
                                                  static_cast<std::size_t>(h0.shape(0)), hp, vp, o);
  }

  template <class T>
  void feed_impl(LyapunovEngine<T>& e, const py::object& x, std::size_t total_hint,
                 const py::object& progress) {
    const T* xp = nullptr;
    std::size_t steps = 0;
    if (dense_) {
      steps = dense_steps_;
    } else {
      const auto xa = as_ndarray(x, "x");
      const auto B = static_cast<py::ssize_t>(e.batch());
      xp = require<T>(xa, "x", {-1, B, input_size_});
      steps = static_cast<std::size_t>(xa.shape(0));
    }
    Control ctl = make_control(progress);
    py::gil_scoped_release release;
    e.feed(xp, steps, total_hint, ctl);
  }

  template <class T>
  py::dict result_impl(LyapunovEngine<T>& e) {
    e.finish();
    const auto B = static_cast<py::ssize_t>(e.batch()), k = static_cast<py::ssize_t>(e.k());
    const auto steps = e.record_steps();
    const auto n = static_cast<py::ssize_t>(steps.size());
    py::dict d;
    d["log_growth"] = to_numpy(e.log_growth(), {B, k});
    d["running"] = to_numpy(e.running(), {n, B, k});
    d["block_rates"] = to_numpy(e.block_rates(), {n, B, k});
    std::vector<std::int64_t> st(steps.begin(), steps.end());
    d["record_steps"] = to_numpy(st, {n});
    d["steps"] = e.steps();
    d["accumulated_steps"] = e.accumulated_steps();
    d["state"] = to_numpy(e.state(), {B, static_cast<py::ssize_t>(e.state_dim())});
    return d;
  }

  py::dict model_;
  bool dense_ = false;
  std::size_t dense_steps_ = 0;
  py::ssize_t input_size_ = 0;
  std::variant<std::unique_ptr<LyapunovEngine<float>>, std::unique_ptr<LyapunovEngine<double>>>
      engine_;
};

}  // namespace

// The sizes behind a model's per-step buffers (memory estimates): the state entering step 0,
// the widest state, the widest step scratch (gemm_cols), the largest per-sample cache and the
// input-projection columns, as Model<T> lays them out.
template <class T>
py::tuple step_dims_impl(const py::dict& model) {
  const Model<T> m = parse_model<T>(model);
  const std::size_t steps = m.is_dense() ? m.n_layers() : 1;
  std::size_t width = m.in_dim(0), cols = 0, cache = 0;
  for (std::size_t s = 0; s < steps; ++s) {
    width = std::max({width, m.in_dim(s), m.out_dim(s)});
    cols = std::max(cols, m.gemm_cols(s));
    cache = std::max(cache, m.cache_size(s));
  }
  return py::make_tuple(m.in_dim(0), width, cols, cache, m.proj_cols());
}

void bind_spectra(py::module_& m) {
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const NonFiniteError& e) {
      PyErr_SetString(PyExc_FloatingPointError, e.what());
    }
  });
  m.def(
      "jacobian_spectrum",
      [](const py::dict& model, const py::array& x, const py::object& h0,
         const std::vector<std::size_t>& which, const std::string& method, double tol,
         std::size_t max_iter, std::size_t ncv, std::size_t block, std::uint64_t seed,
         int num_threads, const py::object& progress, std::size_t fallback_max_dim) {
        SpectrumOptions o;
        o.fallback_max_dim = fallback_max_dim;
        o.method = parse_name(kSpectrumMethods, method, "method");
        o.tol = tol;
        o.max_iter = max_iter;
        o.ncv = ncv;
        o.block = block;
        o.seed = seed;
        o.num_threads = num_threads;
        if (is_float32(model)) return spectrum_impl<float>(model, x, h0, which, o, progress);
        return spectrum_impl<double>(model, x, h0, which, o, progress);
      },
      py::arg("model"), py::arg("x"), py::arg("h0"), py::arg("which"), py::arg("method"),
      py::arg("tol"), py::arg("max_iter"), py::arg("ncv"), py::arg("block"), py::arg("seed"),
      py::arg("num_threads"), py::arg("progress"), py::arg("fallback_max_dim") = 0);
  m.def(
      "jacobian_log_singular_values",
      [](const py::dict& model, const py::array& x, const py::object& h0, int num_threads,
         const py::object& progress) {
        if (is_float32(model)) return singular_impl<float>(model, x, h0, num_threads, progress);
        return singular_impl<double>(model, x, h0, num_threads, progress);
      },
      py::arg("model"), py::arg("x"), py::arg("h0"), py::arg("num_threads"), py::arg("progress"));
  m.def(
      "model_step_dims",
      [](const py::dict& model) {
        return is_float32(model) ? step_dims_impl<float>(model) : step_dims_impl<double>(model);
      },
      py::arg("model"),
      "(initial state width, widest state, step scratch columns, cache per sample, input "
      "projection columns) of a model description.");
  py::class_<PyLyapunov>(m, "LyapunovEngine")
      .def(py::init<const py::dict&, const py::array&, const py::array&, std::size_t, std::size_t,
                    std::size_t, int>(),
           py::arg("model"), py::arg("h0"), py::arg("v0"), py::arg("burn_in"), py::arg("qr_every"),
           py::arg("max_records"), py::arg("num_threads"))
      .def("feed", &PyLyapunov::feed, py::arg("x"), py::arg("total_hint"), py::arg("progress"))
      .def("result", &PyLyapunov::result);
}

}  // namespace vgcore::bind
