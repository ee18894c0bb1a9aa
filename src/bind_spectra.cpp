// Bindings for Jacobian spectra, Lyapunov exponents and singular values of Jacobian products:
// validate, dispatch on float32 / float64, release the GIL, call the core.
//
// A model arrives as a dict: {"kind": "mlp", "layers": [layer dicts as for
// dense_gradient_flow]} or {"kind": "rnn_tanh" | "rnn_relu" | "lstm" | "gru", "weight_ih",
// "weight_hh", "bias_ih", "bias_hh"}, or a stack {"kind": cell, "num_layers": L,
// "bidirectional": False, "layers": [such dicts without "kind", PyTorch's order]}. The core
// keeps pointers into these arrays, so objects that outlive the call (the Lyapunov engine) keep
// the dict alive.
#include <memory>
#include <variant>

#include "pybind11.hpp"
#include "vgcore/analysis/lyapunov.hpp"
#include "vgcore/analysis/singular.hpp"
#include "vgcore/analysis/spectrum.hpp"
#include "vgcore/model/tangent.hpp"

namespace vgcore::bind {
namespace {

DenseBlock block_of(const std::string& s) {
  if (s == "plain") return DenseBlock::plain;
  if (s == "residual") return DenseBlock::residual;
  if (s == "highway") return DenseBlock::highway;
  throw py::value_error("block must be 'plain', 'residual' or 'highway', got '" + s + "'");
}

DenseNorm norm_of(const std::string& s) {
  if (s == "none") return DenseNorm::none;
  if (s == "layernorm") return DenseNorm::layernorm;
  if (s == "batchnorm") return DenseNorm::batchnorm;
  if (s == "batchnorm_eval") return DenseNorm::batchnorm_eval;
  throw py::value_error("norm must be 'none', 'layernorm', 'batchnorm' or 'batchnorm_eval', got '" +
                        s + "'");
}

CellKind cell_of(const std::string& cell) {
  if (cell == "rnn_tanh") return CellKind::rnn_tanh;
  if (cell == "rnn_relu") return CellKind::rnn_relu;
  if (cell == "lstm") return CellKind::lstm;
  if (cell == "gru") return CellKind::gru;
  throw py::value_error("model kind must be 'mlp', 'rnn_tanh', 'rnn_relu', 'lstm' or 'gru', got '" +
                        cell + "'");
}

// A recurrent stack: {"kind": cell, "num_layers", "bidirectional", "layers"}.
bool is_stack(const py::dict& model) {
  return model["kind"].cast<std::string>() != "mlp" && model.contains("layers");
}

bool is_f32(const py::dict& model) {
  const auto kind = model["kind"].cast<std::string>();
  const auto layers = model.contains("layers") ? model["layers"].cast<py::list>() : py::list();
  if (model.contains("layers") && layers.empty()) throw py::value_error("the model has no layers");
  const py::object w = kind == "mlp"     ? layers[0].cast<py::dict>()["weight"]
                       : is_stack(model) ? layers[0].cast<py::dict>()["weight_hh"]
                                         : model["weight_hh"];
  return has_dtype<float>(w.cast<py::array>());
}

// One recurrent layer's dict; names in messages start with `p` ("" or "layers[i].").
// input_size < 0: any.
template <class T>
RecurrentWeights<T> recurrent_weights(const py::dict& d, CellKind kind, const std::string& p,
                                      py::ssize_t hidden, py::ssize_t input_size) {
  RecurrentWeights<T> w;
  w.kind = kind;
  const auto whh = d["weight_hh"].cast<py::array>();
  if (whh.ndim() != 2 || whh.shape(1) <= 0)
    throw py::value_error(p + "weight_hh must have shape (G*N, N), got " + shape_str(whh));
  const auto N = hidden < 0 ? whh.shape(1) : hidden, G = static_cast<py::ssize_t>(cell_gates(kind));
  const auto wih = d["weight_ih"].cast<py::array>();
  w.hidden = static_cast<std::size_t>(N);
  w.weight_hh = require<T>(whh, (p + "weight_hh").c_str(), {G * N, N});
  w.weight_ih = require<T>(wih, (p + "weight_ih").c_str(), {G * N, input_size});
  w.input_size = static_cast<std::size_t>(wih.shape(1));
  w.bias_ih = optional_array<T>(d["bias_ih"], (p + "bias_ih").c_str(), {G * N});
  w.bias_hh = optional_array<T>(d["bias_hh"], (p + "bias_hh").c_str(), {G * N});
  return w;
}

template <class T>
TangentModel<T> make_model(const py::dict& model) {
  const auto kind = model["kind"].cast<std::string>();
  if (kind == "mlp") {
    const auto specs = model["layers"].cast<py::list>();
    std::vector<DenseLayer<T>> layers(specs.size());
    py::ssize_t width = -1;
    for (std::size_t l = 0; l < specs.size(); ++l) {
      const auto spec = specs[l].cast<py::dict>();
      const std::string p = "layers[" + std::to_string(l) + "].";
      DenseLayer<T>& ly = layers[l];
      const auto w = spec["weight"].cast<py::array>();
      ly.weight = require<T>(w, (p + "weight").c_str(), {-1, width});
      width = w.shape(1);
      const py::ssize_t out = w.shape(0);
      ly.in = static_cast<std::size_t>(width);
      ly.out = static_cast<std::size_t>(out);
      ly.bias = optional_array<T>(spec["bias"], (p + "bias").c_str(), {out});
      const auto a = spec["act"].cast<py::tuple>();
      ly.act = make_activation(a[0].cast<std::string>(), a[1].cast<double>(), a[2].cast<double>());
      ly.block = block_of(spec["block"].cast<std::string>());
      ly.alpha = spec["alpha"].cast<double>();
      ly.gate_weight =
          optional_array<T>(spec["gate_weight"], (p + "gate_weight").c_str(), {out, width});
      ly.gate_bias = optional_array<T>(spec["gate_bias"], (p + "gate_bias").c_str(), {out});
      ly.norm = norm_of(spec["norm"].cast<std::string>());
      ly.norm_weight = optional_array<T>(spec["norm_weight"], (p + "norm_weight").c_str(), {out});
      ly.norm_bias = optional_array<T>(spec["norm_bias"], (p + "norm_bias").c_str(), {out});
      if (ly.norm == DenseNorm::batchnorm_eval) {
        ly.running_mean =
            require<T>(spec["running_mean"].cast<py::array>(), (p + "running_mean").c_str(), {out});
        ly.running_var =
            require<T>(spec["running_var"].cast<py::array>(), (p + "running_var").c_str(), {out});
      }
      ly.eps = spec["eps"].cast<double>();
      width = out;
    }
    return TangentModel<T>::dense(std::move(layers));
  }
  const CellKind cell = cell_of(kind);
  if (!is_stack(model))
    return TangentModel<T>::recurrent(recurrent_weights<T>(model, cell, "", -1, -1));
  if (model["bidirectional"].cast<bool>())
    throw py::value_error(
        "a bidirectional model is not a dynamical system forward in time (its reverse direction "
        "runs backward in time), so its step Jacobians are not defined; analyse a unidirectional "
        "model or one direction");
  const auto L = model["num_layers"].cast<py::ssize_t>();
  const auto specs = model["layers"].cast<py::list>();
  if (L < 1 || static_cast<py::ssize_t>(specs.size()) != L)
    throw py::value_error("num_layers = " + std::to_string(L) + " needs as many layers, got " +
                          std::to_string(specs.size()));
  std::vector<RecurrentWeights<T>> layers;
  for (py::ssize_t l = 0; l < L; ++l) {
    const py::ssize_t N = l == 0 ? -1 : static_cast<py::ssize_t>(layers[0].hidden);
    layers.push_back(recurrent_weights<T>(specs[static_cast<std::size_t>(l)].cast<py::dict>(), cell,
                                          "layers[" + std::to_string(l) + "].", N,
                                          l == 0 ? -1 : N));
  }
  return TangentModel<T>::stack(layers);
}

template <class T>
py::array_t<T> copy_out(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// Inputs of a whole-sequence analysis: recurrent x (T, B, I) or dense x (B, in).
template <class T>
struct Inputs {
  const T* x = nullptr;
  const T* h0 = nullptr;
  std::size_t steps = 0, batch = 0;
};

template <class T>
Inputs<T> inputs(const TangentModel<T>& m, const py::array& x, const py::object& h0) {
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

// ---- JVP / VJP of one step (test hook) --------------------------------------------------

template <class T>
py::dict tangent_map_impl(const py::dict& model, std::size_t step, const py::object& x_t,
                          const py::array& state, const py::array& V, const py::array& W) {
  const TangentModel<T> m = make_model<T>(model);
  const std::size_t s = m.is_dense() ? step : 0;
  if (m.is_dense() && step >= m.n_layers()) throw py::value_error("step out of range");
  const auto din = static_cast<py::ssize_t>(m.in_dim(s)),
             dout = static_cast<py::ssize_t>(m.out_dim(s));
  const T* h = require<T>(state, "state", {-1, din});
  const auto B = state.shape(0);
  const T* v = require<T>(V, "V", {B, -1, din});
  const auto k = V.shape(1);
  const T* w = require<T>(W, "W", {B, k, dout});
  std::vector<T> proj;
  if (!m.is_dense()) {
    const T* xp =
        require<T>(x_t.cast<py::array>(), "x_t", {B, static_cast<py::ssize_t>(m.input_size())});
    proj.resize(static_cast<std::size_t>(B) * m.proj_cols());
    m.project_inputs(xp, static_cast<std::size_t>(B), proj.data());
  }
  py::array_t<T> y({B, dout}), jv({B, k, dout}), jtw({B, k, din});
  const std::size_t C = m.cache_size(s), gc = m.gemm_cols(s);
  std::vector<T> cache(static_cast<std::size_t>(B) * C),
      U(static_cast<std::size_t>(std::max<py::ssize_t>(B, k)) * gc);
  m.gemm_rows(s, h, din, static_cast<std::size_t>(B), U.data(), gc);
  m.state_update(s, proj.empty() ? nullptr : proj.data(), U.data(), gc, h, din, y.mutable_data(),
                 dout, cache.data(), static_cast<std::size_t>(B));
  for (py::ssize_t b = 0; b < B; ++b) {
    m.jvp(s, cache.data() + b * C, v + b * k * din, jv.mutable_data() + b * k * dout, k, U.data());
    m.vjp(s, cache.data() + b * C, w + b * k * dout, jtw.mutable_data() + b * k * din, k, U.data());
  }
  py::dict d;
  d["state"] = y;
  d["jvp"] = jv;
  d["vjp"] = jtw;
  return d;
}

// ---- spectrum -------------------------------------------------------------------------------

SpectrumMethod method_of(const std::string& s) {
  if (s == "exact") return SpectrumMethod::exact;
  if (s == "arnoldi") return SpectrumMethod::arnoldi;
  if (s == "power") return SpectrumMethod::power;
  throw py::value_error("method must be 'exact', 'arnoldi' or 'power', got '" + s + "'");
}

template <class T>
py::dict spectrum_impl(const py::dict& model, const py::array& x, const py::object& h0,
                       const std::vector<std::size_t>& which, const SpectrumOptions& opt,
                       const py::object& progress) {
  const TangentModel<T> m = make_model<T>(model);
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
  d["spectral_radius"] = copy_out(r.radius, shape);
  d["sigma_max"] = copy_out(r.sigma, shape);
  d["log_spectral_radius"] = copy_out(r.log_radius, shape);
  d["log_sigma_max"] = copy_out(r.log_sigma, shape);
  d["radius_residual"] = copy_out(r.radius_residual, shape);
  d["sigma_residual"] = copy_out(r.sigma_residual, shape);
  d["radius_condition"] = copy_out(r.radius_condition, shape);
  d["radius_error"] = copy_out(r.radius_error, shape);
  d["sigma_error"] = copy_out(r.sigma_error, shape);
  d["radius_iterations"] = copy_out(r.radius_iterations, shape);
  d["sigma_iterations"] = copy_out(r.sigma_iterations, shape);
  d["converged"] = copy_out(r.converged, shape);
  d["reliable"] = copy_out(r.reliable, shape);
  d["radius_fallback"] = copy_out(r.radius_fallback, shape);
  d["sigma_fallback"] = copy_out(r.sigma_fallback, shape);
  return d;
}

// ---- singular values --------------------------------------------------------------------

template <class T>
py::dict singular_impl(const py::dict& model, const py::array& x, const py::object& h0,
                       int num_threads, const py::object& progress) {
  const TangentModel<T> m = make_model<T>(model);
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
  d["log_singular_values"] = copy_out(
      r.log_singular, {static_cast<py::ssize_t>(in.batch), static_cast<py::ssize_t>(r.rank)});
  d["jacobi_sweeps"] = copy_out(r.jacobi_sweeps, {static_cast<py::ssize_t>(in.batch)});
  return d;
}

// ---- Lyapunov engine --------------------------------------------------------------------

class PyLyapunov {
 public:
  PyLyapunov(const py::dict& model, const py::array& h0, const py::array& v0, std::size_t burn_in,
             std::size_t qr_every, std::size_t max_records, int num_threads)
      : model_(model) {
    if (is_f32(model))
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
    TangentModel<T> m = make_model<T>(model_);
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
      steps = model_["layers"].cast<py::list>().size();
    } else {
      const auto xa = x.cast<py::array>();
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
    d["log_growth"] = copy_out(e.log_growth(), {B, k});
    d["running"] = copy_out(e.running(), {n, B, k});
    d["block_rates"] = copy_out(e.block_rates(), {n, B, k});
    std::vector<std::int64_t> st(steps.begin(), steps.end());
    d["record_steps"] = copy_out(st, {n});
    d["steps"] = e.steps();
    d["accumulated_steps"] = e.accumulated_steps();
    d["state"] = copy_out(e.state(), {B, static_cast<py::ssize_t>(e.state_dim())});
    return d;
  }

  py::dict model_;
  bool dense_ = false;
  py::ssize_t input_size_ = 0;
  std::variant<std::unique_ptr<LyapunovEngine<float>>, std::unique_ptr<LyapunovEngine<double>>>
      engine_;
};

}  // namespace

void bind_spectra(py::module_& m) {
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const NonFiniteError& e) {
      PyErr_SetString(PyExc_FloatingPointError, e.what());
    }
  });
  m.def(
      "tangent_map",
      [](const py::dict& model, std::size_t step, const py::object& x_t, const py::array& state,
         const py::array& V, const py::array& W) {
        if (is_f32(model)) return tangent_map_impl<float>(model, step, x_t, state, V, W);
        return tangent_map_impl<double>(model, step, x_t, state, V, W);
      },
      py::arg("model"), py::arg("step"), py::arg("x_t"), py::arg("state"), py::arg("V"),
      py::arg("W"), "One step of the model for a batch of states, with J V and J^T W (test hook).");
  m.def(
      "jacobian_spectrum",
      [](const py::dict& model, const py::array& x, const py::object& h0,
         const std::vector<std::size_t>& which, const std::string& method, double tol,
         std::size_t max_iter, std::size_t ncv, std::size_t block, std::uint64_t seed,
         int num_threads, const py::object& progress, std::size_t fallback_max_dim) {
        SpectrumOptions o;
        o.fallback_max_dim = fallback_max_dim;
        o.method = method_of(method);
        o.tol = tol;
        o.max_iter = max_iter;
        o.ncv = ncv;
        o.block = block;
        o.seed = seed;
        o.num_threads = num_threads;
        if (is_f32(model)) return spectrum_impl<float>(model, x, h0, which, o, progress);
        return spectrum_impl<double>(model, x, h0, which, o, progress);
      },
      py::arg("model"), py::arg("x"), py::arg("h0"), py::arg("which"), py::arg("method"),
      py::arg("tol"), py::arg("max_iter"), py::arg("ncv"), py::arg("block"), py::arg("seed"),
      py::arg("num_threads"), py::arg("progress"), py::arg("fallback_max_dim") = 0);
  m.def(
      "jacobian_log_singular_values",
      [](const py::dict& model, const py::array& x, const py::object& h0, int num_threads,
         const py::object& progress) {
        if (is_f32(model)) return singular_impl<float>(model, x, h0, num_threads, progress);
        return singular_impl<double>(model, x, h0, num_threads, progress);
      },
      py::arg("model"), py::arg("x"), py::arg("h0"), py::arg("num_threads"), py::arg("progress"));
  m.def(
      "graded_jacobi",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> B, py::array_t<double> d) {
        // B: (r, n) rows = the columns of the graded matrix; d: (r,) log scales.
        auto Bc = B.attr("copy")().cast<py::array_t<double>>();
        auto dc = d.attr("copy")().cast<py::array_t<double>>();
        const auto r = static_cast<std::size_t>(Bc.shape(0)),
                   n = static_cast<std::size_t>(Bc.shape(1));
        if (static_cast<std::size_t>(dc.size()) != r)
          throw py::value_error("d must have one entry per row of B");
        const int sweeps = graded_jacobi(Bc.mutable_data(), n, r, dc.mutable_data());
        return py::make_tuple(dc, sweeps);
      },
      py::arg("B"), py::arg("d"),
      "Log singular values of diag(e^d) B by graded one-sided Jacobi (test hook).");
  py::class_<PyLyapunov>(m, "LyapunovEngine")
      .def(py::init<const py::dict&, const py::array&, const py::array&, std::size_t, std::size_t,
                    std::size_t, int>(),
           py::arg("model"), py::arg("h0"), py::arg("v0"), py::arg("burn_in"), py::arg("qr_every"),
           py::arg("max_records"), py::arg("num_threads"))
      .def("feed", &PyLyapunov::feed, py::arg("x"), py::arg("total_hint"), py::arg("progress"))
      .def("result", &PyLyapunov::result);
}

}  // namespace vgcore::bind
