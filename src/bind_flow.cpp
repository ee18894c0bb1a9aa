// Bindings for gradient-flow kernels: validate, allocate outputs, release the GIL, call the core.
#include "pybind11.hpp"
#include "vgcore/sweeps/dense.hpp"
#include "vgcore/sweeps/recurrent.hpp"

namespace vgcore::bind {
namespace {

py::dict stats_to_dict(const FlowStats& s) {
  py::dict d;
  d["log_grad_norms"] = to_numpy(s.log_grad_norms);
  d["log_cell_grad_norms"] = to_numpy(s.log_cell_grad_norms);
  d["act_mean"] = to_numpy(s.act_mean);
  d["act_std"] = to_numpy(s.act_std);
  d["saturation"] = to_numpy(s.saturation);
  auto gs = to_numpy(s.gate_saturation);
  if (s.n_gates > 0)
    gs = gs.reshape({static_cast<py::ssize_t>(s.gate_saturation.size() / s.n_gates),
                     static_cast<py::ssize_t>(s.n_gates)});
  d["gate_saturation"] = gs;
  d["log_param_grad_norms"] = to_numpy(s.log_param_grad_norms);
  // Which log_param_grad_norms entries belong to an existing parameter, and the steps whose
  // pre-activation overflowed (inf/NaN) although the activation output may be finite.
  py::array_t<bool> present(static_cast<py::ssize_t>(s.param_present.size()));
  for (std::size_t i = 0; i < s.param_present.size(); ++i)
    present.mutable_data()[i] = s.param_present[i] != 0;
  d["param_grad_present"] = present;
  py::array_t<bool> bad(static_cast<py::ssize_t>(s.preact_nonfinite.size()));
  for (std::size_t i = 0; i < s.preact_nonfinite.size(); ++i)
    bad.mutable_data()[i] = s.preact_nonfinite[i] != 0;
  d["preact_nonfinite"] = bad;
  return d;
}

FlowOptions make_options(bool param_grads, double saturation_threshold, int num_threads,
                         bool rescale) {
  FlowOptions o;
  o.param_grads = param_grads;
  o.rescale = rescale;
  o.saturation_threshold = saturation_threshold;
  o.num_threads = num_threads;
  return o;
}

DenseBlock parse_block(const std::string& s) {
  if (s == "plain") return DenseBlock::plain;
  if (s == "residual") return DenseBlock::residual;
  if (s == "highway") return DenseBlock::highway;
  throw py::value_error("block must be 'plain', 'residual' or 'highway', got '" + s + "'");
}

DenseNorm parse_norm(const std::string& s) {
  if (s == "none") return DenseNorm::none;
  if (s == "layernorm") return DenseNorm::layernorm;
  if (s == "batchnorm") return DenseNorm::batchnorm;
  if (s == "batchnorm_eval") return DenseNorm::batchnorm_eval;
  throw py::value_error("norm must be 'none', 'layernorm', 'batchnorm' or 'batchnorm_eval', got '" +
                        s + "'");
}

// layers: list of dicts with keys weight, bias, act=(name, alpha, beta), block, alpha,
// gate_weight, gate_bias, norm, norm_weight, norm_bias, eps.
template <class T>
py::dict dense_impl(const py::list& specs, const py::array& x, const py::object& cotangent,
                    bool keep_grads, const FlowOptions& opt, const py::object& progress) {
  const std::size_t L = specs.size();
  const T* xp = require<T>(x, "x", {-1, -1});
  const auto B = x.shape(0);
  std::vector<DenseLayer<T>> layers(L);
  py::ssize_t width = x.shape(1);
  std::vector<py::ssize_t> widths{width};
  for (std::size_t l = 0; l < L; ++l) {
    const auto spec = specs[l].cast<py::dict>();
    const std::string p = "layers[" + std::to_string(l) + "].";
    auto name = [&](const char* k) { return p + k; };
    DenseLayer<T>& ly = layers[l];
    const auto w = spec["weight"].cast<py::array>();
    ly.weight = require<T>(w, name("weight").c_str(), {-1, width});
    const py::ssize_t out = w.shape(0);
    ly.in = static_cast<std::size_t>(width);
    ly.out = static_cast<std::size_t>(out);
    ly.bias = optional_array<T>(spec["bias"], name("bias").c_str(), {out});
    const auto a = spec["act"].cast<py::tuple>();
    ly.act = make_activation(a[0].cast<std::string>(), a[1].cast<double>(), a[2].cast<double>());
    ly.block = parse_block(spec["block"].cast<std::string>());
    ly.alpha = spec["alpha"].cast<double>();
    ly.gate_weight =
        optional_array<T>(spec["gate_weight"], name("gate_weight").c_str(), {out, width});
    ly.gate_bias = optional_array<T>(spec["gate_bias"], name("gate_bias").c_str(), {out});
    ly.norm = parse_norm(spec["norm"].cast<std::string>());
    ly.norm_weight = optional_array<T>(spec["norm_weight"], name("norm_weight").c_str(), {out});
    ly.norm_bias = optional_array<T>(spec["norm_bias"], name("norm_bias").c_str(), {out});
    if (ly.norm == DenseNorm::batchnorm_eval) {
      ly.running_mean =
          require<T>(spec["running_mean"].cast<py::array>(), name("running_mean").c_str(), {out});
      ly.running_var =
          require<T>(spec["running_var"].cast<py::array>(), name("running_var").c_str(), {out});
    }
    ly.eps = spec["eps"].cast<double>();
    width = out;
    widths.push_back(width);
  }
  DenseFlowIO<T> io;
  io.x = xp;
  io.batch = static_cast<std::size_t>(B);
  io.cotangent = optional_array<T>(cotangent, "cotangent", {B, width});
  py::array_t<T> y({B, width});
  io.y = y.mutable_data();
  py::list grads;
  if (keep_grads) {
    for (auto wd : widths) {
      py::array_t<T> g({B, wd});
      io.grads.push_back(g.mutable_data());
      grads.append(g);
    }
  }
  Control ctl = make_control(progress);
  FlowStats s;
  {
    py::gil_scoped_release release;
    s = dense_gradient_flow(layers, io, opt, ctl);
  }
  py::dict d = stats_to_dict(s);
  d["y"] = y;
  d["grads"] = keep_grads ? py::object(grads) : py::none();
  return d;
}

CellKind parse_cell(const std::string& cell) {
  if (cell == "rnn_tanh") return CellKind::rnn_tanh;
  if (cell == "rnn_relu") return CellKind::rnn_relu;
  if (cell == "lstm") return CellKind::lstm;
  if (cell == "gru") return CellKind::gru;
  throw py::value_error("cell must be one of 'rnn_tanh', 'rnn_relu', 'lstm', 'gru', got '" + cell +
                        "'");
}

// The recurrent description (Model.to_spec): {"kind": cell, "weight_ih", "weight_hh",
// "bias_ih", "bias_hh"} for one layer, or {"kind", "num_layers", "bidirectional", "layers":
// [per-layer dicts, PyTorch order]} for a stack. Parsed once into the core's layers.
template <class T>
struct ParsedStack {
  std::vector<RecurrentWeights<T>> layers;
  std::size_t num_layers = 1;
  bool bidirectional = false;
};

template <class T>
ParsedStack<T> parse_stack(const py::dict& spec, py::ssize_t input_size) {
  ParsedStack<T> out;
  const CellKind kind = parse_cell(spec["kind"].cast<std::string>());
  const auto G = static_cast<py::ssize_t>(cell_gates(kind));
  std::vector<py::dict> dicts;
  std::vector<std::string> names;
  if (spec.contains("layers")) {
    out.num_layers = spec["num_layers"].cast<std::size_t>();
    out.bidirectional = spec["bidirectional"].cast<bool>();
    const auto list = spec["layers"].cast<py::list>();
    const std::size_t D = out.bidirectional ? 2 : 1;
    if (out.num_layers == 0 || list.size() != out.num_layers * D)
      throw py::value_error("spec['layers'] must hold num_layers * directions = " +
                            std::to_string(out.num_layers * D) + " layers, got " +
                            std::to_string(list.size()));
    for (std::size_t i = 0; i < list.size(); ++i) {
      dicts.push_back(list[i].cast<py::dict>());
      names.push_back("layers[" + std::to_string(i) + "].");
    }
  } else {
    dicts.push_back(spec);
    names.emplace_back("");
  }
  const std::size_t D = out.bidirectional ? 2 : 1;
  py::ssize_t N = -1;
  for (std::size_t i = 0; i < dicts.size(); ++i) {
    const py::dict& d = dicts[i];
    auto name = [&](const char* k) { return names[i] + k; };
    const auto whh = d["weight_hh"].cast<py::array>();
    if (whh.ndim() != 2 || whh.shape(1) <= 0)
      throw py::value_error(name("weight_hh") + " must have shape (G*N, N), got " + shape_str(whh));
    if (N < 0) N = whh.shape(1);
    const py::ssize_t I = i < D ? input_size : static_cast<py::ssize_t>(D) * N;
    RecurrentWeights<T> w;
    w.kind = kind;
    w.input_size = static_cast<std::size_t>(I);
    w.hidden = static_cast<std::size_t>(N);
    w.weight_ih =
        require<T>(d["weight_ih"].cast<py::array>(), name("weight_ih").c_str(), {G * N, I});
    w.weight_hh = require<T>(whh, name("weight_hh").c_str(), {G * N, N});
    w.bias_ih = optional_array<T>(d["bias_ih"], name("bias_ih").c_str(), {G * N});
    w.bias_hh = optional_array<T>(d["bias_hh"], name("bias_hh").c_str(), {G * N});
    out.layers.push_back(w);
  }
  return out;
}

template <class T>
py::dict stack_impl(const py::dict& spec, const py::array& x, const py::object& h0,
                    const py::object& c0, const py::object& cotangent,
                    const py::object& cell_cotangent, bool keep_grads, bool keep_states,
                    bool input_grad_norms, const FlowOptions& opt, const py::object& progress) {
  const T* xp = require<T>(x, "x", {-1, -1, -1});
  const auto Ts = x.shape(0), B = x.shape(1), I = x.shape(2);
  const ParsedStack<T> st = parse_stack<T>(spec, I);
  const bool lstm = st.layers[0].kind == CellKind::lstm;
  const auto N = static_cast<py::ssize_t>(st.layers[0].hidden);
  const auto R = static_cast<py::ssize_t>(st.layers.size());  // runs: layers x directions
  const auto DN = static_cast<py::ssize_t>(st.bidirectional ? 2 : 1) * N;
  StackFlowIO<T> io;
  io.x = xp;
  io.steps = static_cast<std::size_t>(Ts);
  io.batch = static_cast<std::size_t>(B);
  io.h0 = optional_array<T>(h0, "h0", {R, B, N});
  if (!c0.is_none() && !lstm) throw py::value_error("c0 is only meaningful for LSTM");
  io.c0 = optional_array<T>(c0, "c0", {R, B, N});
  if (!cotangent.is_none()) {
    const auto cot = cotangent.cast<py::array>();
    io.cotangent_per_step = cot.ndim() == 3;
    io.cotangent = io.cotangent_per_step ? require<T>(cot, "cotangent", {Ts, B, DN})
                                         : require<T>(cot, "cotangent", {B, DN});
  }
  if (!cell_cotangent.is_none() && (!lstm || R != 1))
    throw py::value_error("cell_cotangent is only meaningful for a single-layer LSTM");
  io.cell_cotangent = optional_array<T>(cell_cotangent, "cell_cotangent", {B, N});
  io.input_grad_norms = input_grad_norms;
  py::object states = py::none(), cell_states = py::none(), grads = py::none(),
             cell_grads = py::none(), c_n = py::none();
  auto alloc = [&](py::object& slot) {
    py::array_t<T> a({R, Ts + 1, B, N});
    slot = a;
    return a.mutable_data();
  };
  if (keep_states) {
    io.states = alloc(states);
    if (lstm) io.cell_states = alloc(cell_states);
  }
  if (keep_grads) {
    io.grads = alloc(grads);
    if (lstm) io.cell_grads = alloc(cell_grads);
  }
  py::array_t<T> out_last({B, DN}), h_n({R, B, N});
  io.output_last = out_last.mutable_data();
  io.h_n = h_n.mutable_data();
  if (lstm) {
    py::array_t<T> c({R, B, N});
    io.c_n = c.mutable_data();
    c_n = c;
  }
  Control ctl = make_control(progress);
  StackFlowStats s;
  {
    py::gil_scoped_release release;
    s = stacked_gradient_flow(st.layers, st.num_layers, st.bidirectional, io, opt, ctl);
  }
  py::list runs;
  for (const auto& r : s.layers) runs.append(stats_to_dict(r));
  py::dict d;
  d["layers"] = runs;
  d["log_input_grad_norms"] =
      input_grad_norms ? py::object(to_numpy(s.log_input_grad_norms)) : py::none();
  d["output_last"] = out_last;
  d["h_n"] = h_n;
  d["c_n"] = c_n;
  d["states"] = states;
  d["cell_states"] = cell_states;
  d["grads"] = grads;
  d["cell_grads"] = cell_grads;
  return d;
}

bool is_float32(const py::array& x) { return has_dtype<float>(x); }

}  // namespace

void bind_flow(py::module_& m) {
  m.def(
      "dense_gradient_flow",
      [](const py::list& layers, const py::array& x, const py::object& cotangent, bool keep_grads,
         bool param_grads, double saturation_threshold, int num_threads, const py::object& progress,
         bool rescale) {
        const FlowOptions opt =
            make_options(param_grads, saturation_threshold, num_threads, rescale);
        if (is_float32(x))
          return dense_impl<float>(layers, x, cotangent, keep_grads, opt, progress);
        return dense_impl<double>(layers, x, cotangent, keep_grads, opt, progress);
      },
      py::arg("layers"), py::arg("x"), py::arg("cotangent"), py::arg("keep_grads"),
      py::arg("param_grads"), py::arg("saturation_threshold"), py::arg("num_threads"),
      py::arg("progress"), py::arg("rescale") = true);
  m.def(
      "stacked_gradient_flow",
      [](const py::dict& spec, const py::array& x, const py::object& h0, const py::object& c0,
         const py::object& cotangent, const py::object& cell_cotangent, bool keep_grads,
         bool keep_states, bool input_grad_norms, bool param_grads, double saturation_threshold,
         int num_threads, const py::object& progress, bool rescale) {
        const FlowOptions opt =
            make_options(param_grads, saturation_threshold, num_threads, rescale);
        if (is_float32(x))
          return stack_impl<float>(spec, x, h0, c0, cotangent, cell_cotangent, keep_grads,
                                   keep_states, input_grad_norms, opt, progress);
        return stack_impl<double>(spec, x, h0, c0, cotangent, cell_cotangent, keep_grads,
                                  keep_states, input_grad_norms, opt, progress);
      },
      py::arg("spec"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("cotangent"),
      py::arg("cell_cotangent"), py::arg("keep_grads"), py::arg("keep_states"),
      py::arg("input_grad_norms"), py::arg("param_grads"), py::arg("saturation_threshold"),
      py::arg("num_threads"), py::arg("progress"), py::arg("rescale") = true);
}

}  // namespace vgcore::bind
