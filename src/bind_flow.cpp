// Bindings for gradient-flow kernels: validate, allocate outputs, release the GIL, call the core.
#include "convert.hpp"
#include "pybind11.hpp"
#include "vgcore/sweeps/dense.hpp"
#include "vgcore/sweeps/model_flow.hpp"
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

// The dense stack's description: {"kind": "mlp", "layers": [...]} (Model.to_spec) or the list
// of layer dicts alone.
template <class T>
py::dict dense_impl(const py::object& spec, const py::array& x, const py::object& cotangent,
                    bool keep_grads, const FlowOptions& opt, const py::object& progress) {
  const T* xp = require<T>(x, "x", {-1, -1});
  const auto B = x.shape(0);
  const std::vector<DenseLayer<T>> layers =
      parse_dense_layers<T>(dense_layer_list(spec), x.shape(1));
  std::vector<py::ssize_t> widths{x.shape(1)};
  for (const auto& ly : layers) widths.push_back(static_cast<py::ssize_t>(ly.out));
  const py::ssize_t width = widths.back();
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

template <class T>
py::dict stack_impl(const py::dict& spec, const py::array& x, const py::object& h0,
                    const py::object& c0, const py::object& cotangent,
                    const py::object& cell_cotangent, bool keep_grads, bool keep_states,
                    bool input_grad_norms, const FlowOptions& opt, const py::object& progress) {
  const T* xp = require<T>(x, "x", {-1, -1, -1});
  const auto Ts = x.shape(0), B = x.shape(1), I = x.shape(2);
  const RecurrentStack<T> st = parse_recurrent<T>(spec, recurrent_kind(spec), I, true);
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
    const auto cot = as_ndarray(cotangent, "cotangent");
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

// Any model the description names, through the generic sweep over Model<T> (model_flow.hpp).
template <class T>
py::dict model_impl(const py::dict& spec, const py::array& x, const py::object& h0,
                    const py::object& cotangent, bool keep_grads, const FlowOptions& opt,
                    const py::object& progress) {
  const Model<T> m = parse_model<T>(spec);
  const bool time = m.axis() == Axis::time;
  const T* xp = time ? require<T>(x, "x", {-1, -1, static_cast<py::ssize_t>(m.input_size())})
                     : require<T>(x, "x", {-1, static_cast<py::ssize_t>(m.in_dim(0))});
  const auto Ts = time ? x.shape(0) : static_cast<py::ssize_t>(m.n_layers());
  const auto B = time ? x.shape(1) : x.shape(0);
  const auto D = static_cast<py::ssize_t>(m.in_dim(0));
  const StateSegment out_seg = output_segment(m);
  const auto n_out = static_cast<py::ssize_t>(out_seg.width);
  ModelFlowIO<T> io;
  io.x = xp;
  io.steps = static_cast<std::size_t>(Ts);
  io.batch = static_cast<std::size_t>(B);
  if (time)
    io.h0 = optional_array<T>(h0, "h0", {B, D});
  else if (!h0.is_none())
    throw py::value_error("h0 is only meaningful for a model over time");
  if (!cotangent.is_none()) {
    const auto cot = as_ndarray(cotangent, "cotangent");
    io.cotangent_per_step = time && cot.ndim() == 3;
    io.cotangent = io.cotangent_per_step ? require<T>(cot, "cotangent", {Ts, B, n_out})
                                         : require<T>(cot, "cotangent", {B, n_out});
  }
  py::array_t<T> y({B, n_out});
  io.y = y.mutable_data();
  py::object grads = py::none();
  if (keep_grads) {
    if (!time) throw py::value_error("keep_grads needs a model over time");
    py::array_t<T> g({Ts + 1, B, D});
    io.grads = g.mutable_data();
    grads = g;
  }
  Control ctl = make_control(progress);
  ModelFlowStats s;
  {
    py::gil_scoped_release release;
    s = model_gradient_flow(m, io, opt, ctl);
  }
  const auto n_seg = static_cast<py::ssize_t>(s.segments.size());
  const auto S = static_cast<py::ssize_t>(s.n_states) - 1;
  py::list segments;
  for (const auto& g : s.segments)
    segments.append(py::make_tuple(g.layer, g.part, g.offset, g.width));
  py::dict d;
  d["segments"] = segments;
  d["log_grad_norms"] = to_numpy(s.log_grad_norms).reshape({n_seg, S + 1});
  d["act_mean"] = to_numpy(s.act_mean).reshape({n_seg, S});
  d["act_std"] = to_numpy(s.act_std).reshape({n_seg, S});
  py::array_t<bool> bad(S);
  for (py::ssize_t i = 0; i < S; ++i)
    bad.mutable_data()[i] = s.nonfinite[static_cast<std::size_t>(i)] != 0;
  d["nonfinite"] = bad;
  d["output_segment"] = py::make_tuple(out_seg.layer, out_seg.part, out_seg.offset, out_seg.width);
  d["y"] = y;
  d["grads"] = grads;
  return d;
}

bool x_is_float32(const py::array& x) { return has_dtype<float>(x); }

}  // namespace

void bind_flow(py::module_& m) {
  m.def(
      "dense_gradient_flow",
      [](const py::object& spec, const py::array& x, const py::object& cotangent, bool keep_grads,
         bool param_grads, double saturation_threshold, int num_threads, const py::object& progress,
         bool rescale) {
        const FlowOptions opt =
            make_options(param_grads, saturation_threshold, num_threads, rescale);
        if (x_is_float32(x))
          return dense_impl<float>(spec, x, cotangent, keep_grads, opt, progress);
        return dense_impl<double>(spec, x, cotangent, keep_grads, opt, progress);
      },
      py::arg("spec"), py::arg("x"), py::arg("cotangent"), py::arg("keep_grads"),
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
        if (x_is_float32(x))
          return stack_impl<float>(spec, x, h0, c0, cotangent, cell_cotangent, keep_grads,
                                   keep_states, input_grad_norms, opt, progress);
        return stack_impl<double>(spec, x, h0, c0, cotangent, cell_cotangent, keep_grads,
                                  keep_states, input_grad_norms, opt, progress);
      },
      py::arg("spec"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("cotangent"),
      py::arg("cell_cotangent"), py::arg("keep_grads"), py::arg("keep_states"),
      py::arg("input_grad_norms"), py::arg("param_grads"), py::arg("saturation_threshold"),
      py::arg("num_threads"), py::arg("progress"), py::arg("rescale") = true);
  m.def(
      "model_gradient_flow",
      [](const py::dict& spec, const py::array& x, const py::object& h0,
         const py::object& cotangent, bool keep_grads, int num_threads, const py::object& progress,
         bool rescale) {
        const FlowOptions opt = make_options(false, 1e-3, num_threads, rescale);
        if (x_is_float32(x))
          return model_impl<float>(spec, x, h0, cotangent, keep_grads, opt, progress);
        return model_impl<double>(spec, x, h0, cotangent, keep_grads, opt, progress);
      },
      py::arg("spec"), py::arg("x"), py::arg("h0"), py::arg("cotangent"), py::arg("keep_grads"),
      py::arg("num_threads"), py::arg("progress"), py::arg("rescale") = true);
}

}  // namespace vgcore::bind
