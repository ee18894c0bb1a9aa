// The one place where a Python model description (Model.to_spec) becomes the core's structures:
// the tables of names (cells, dense blocks and norms, spectrum methods) and the parsers of dense
// stacks, recurrent layers and stacks, and whole models. Validation only (keys, dtypes, shapes,
// names), with messages that name the offending entry; no numerics.
//
// A description is {"kind": "mlp", "layers": [dense layer dicts]}, {"kind": cell, "weight_ih",
// "weight_hh", "bias_ih", "bias_hh"} for one recurrent layer, or {"kind": cell, "num_layers",
// "bidirectional", "layers": [such dicts without "kind", PyTorch's order]} for a stack. The
// parsed structures point into the description's arrays: it must outlive them.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "pybind11.hpp"
#include "vgcore/analysis/spectrum.hpp"
#include "vgcore/base/activations.hpp"
#include "vgcore/model/dense_stack.hpp"
#include "vgcore/model/recurrent_stack.hpp"
#include "vgcore/model/model.hpp"

namespace vgcore::bind {

// ---- the tables of names ------------------------------------------------------------------

template <class E>
struct Named {
  const char* name;
  E value;
};

inline constexpr Named<CellKind> kCells[] = {{"rnn_tanh", CellKind::rnn_tanh},
                                             {"rnn_relu", CellKind::rnn_relu},
                                             {"lstm", CellKind::lstm},
                                             {"gru", CellKind::gru}};
inline constexpr Named<DenseBlock> kBlocks[] = {{"plain", DenseBlock::plain},
                                                {"residual", DenseBlock::residual},
                                                {"highway", DenseBlock::highway}};
inline constexpr Named<DenseNorm> kNorms[] = {{"none", DenseNorm::none},
                                              {"layernorm", DenseNorm::layernorm},
                                              {"batchnorm", DenseNorm::batchnorm},
                                              {"batchnorm_eval", DenseNorm::batchnorm_eval}};
inline constexpr Named<SpectrumMethod> kSpectrumMethods[] = {{"exact", SpectrumMethod::exact},
                                                             {"arnoldi", SpectrumMethod::arnoldi},
                                                             {"power", SpectrumMethod::power}};
// The dense stack's kind; the state-space layers' kinds; every other kind is a cell of kCells.
inline constexpr const char* kDenseKind = "mlp";
inline constexpr const char* kSsmKind = "ssm";
inline constexpr const char* kSelectiveSsmKind = "selective_ssm";
inline constexpr const char* kSsmStackKind = "ssm_stack";

// "'a', 'b' or 'c'", after `first` names when given.
template <class E, std::size_t K>
std::string choices(const Named<E> (&table)[K], const std::vector<std::string>& first = {}) {
  std::vector<std::string> all = first;
  for (const auto& e : table) all.emplace_back(e.name);
  std::string s;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i) s += i + 1 == all.size() ? " or " : ", ";
    s += "'" + all[i] + "'";
  }
  return s;
}

// The entry called s; else ValueError "<what> must be 'a', 'b' or 'c', got 's'".
template <class E, std::size_t K>
E parse_name(const Named<E> (&table)[K], const std::string& s, const std::string& what) {
  for (const auto& e : table)
    if (s == e.name) return e.value;
  throw py::value_error(what + " must be " + choices(table) + ", got '" + s + "'");
}

// ---- entries of a description ---------------------------------------------------------------

// d[key], or KeyError naming the entry (`p` + key) when the description lacks it.
inline py::object entry(const py::dict& d, const char* key, const std::string& p) {
  if (!d.contains(key)) throw py::key_error(p + key + " is missing from the model description");
  return d[key];
}

inline py::dict as_dict(const py::handle& o, const std::string& name) {
  if (!py::isinstance<py::dict>(o))
    throw py::type_error(name + " must be a dict, got " + Py_TYPE(o.ptr())->tp_name);
  return py::reinterpret_borrow<py::dict>(o);
}

inline py::list as_list(const py::handle& o, const std::string& name) {
  if (!py::isinstance<py::list>(o))
    throw py::type_error(name + " must be a list, got " + Py_TYPE(o.ptr())->tp_name);
  return py::reinterpret_borrow<py::list>(o);
}

// (name, alpha, beta), alpha / beta NaN for PyTorch's defaults.
inline Activation parse_activation(const py::handle& o, const std::string& name) {
  if (!py::isinstance<py::tuple>(o) || py::len(o) != 3)
    throw py::type_error(name + " must be a tuple (name, alpha, beta), got " +
                         std::string(py::repr(o)));
  const auto t = py::reinterpret_borrow<py::tuple>(o);
  return make_activation(t[0].cast<std::string>(), t[1].cast<double>(), t[2].cast<double>());
}

// ---- dense stacks ------------------------------------------------------------------------

// The layer dicts of a dense stack: weight, bias, act, block, alpha, gate_weight, gate_bias,
// norm, norm_weight, norm_bias, eps (and running_mean, running_var for batchnorm_eval).
// in_width: the input width the first layer must take (-1: any).
template <class T>
std::vector<DenseLayer<T>> parse_dense_layers(const py::list& specs, py::ssize_t in_width) {
  std::vector<DenseLayer<T>> layers(specs.size());
  py::ssize_t width = in_width;
  for (std::size_t l = 0; l < specs.size(); ++l) {
    const std::string p = "layers[" + std::to_string(l) + "].";
    const py::dict spec = as_dict(specs[l], "layers[" + std::to_string(l) + "]");
    DenseLayer<T>& ly = layers[l];
    const auto w = as_ndarray(entry(spec, "weight", p), (p + "weight").c_str());
    ly.weight = require<T>(w, (p + "weight").c_str(), {-1, width});
    width = w.shape(1);
    const py::ssize_t out = w.shape(0);
    ly.in = static_cast<std::size_t>(width);
    ly.out = static_cast<std::size_t>(out);
    ly.bias = optional_array<T>(entry(spec, "bias", p), (p + "bias").c_str(), {out});
    ly.act = parse_activation(entry(spec, "act", p), p + "act");
    ly.block = parse_name(kBlocks, entry(spec, "block", p).cast<std::string>(), p + "block");
    ly.alpha = entry(spec, "alpha", p).cast<double>();
    ly.gate_weight =
        optional_array<T>(entry(spec, "gate_weight", p), (p + "gate_weight").c_str(), {out, width});
    ly.gate_bias = optional_array<T>(entry(spec, "gate_bias", p), (p + "gate_bias").c_str(), {out});
    ly.norm = parse_name(kNorms, entry(spec, "norm", p).cast<std::string>(), p + "norm");
    ly.norm_weight =
        optional_array<T>(entry(spec, "norm_weight", p), (p + "norm_weight").c_str(), {out});
    ly.norm_bias = optional_array<T>(entry(spec, "norm_bias", p), (p + "norm_bias").c_str(), {out});
    if (ly.norm == DenseNorm::batchnorm_eval) {
      ly.running_mean =
          require<T>(as_ndarray(entry(spec, "running_mean", p), (p + "running_mean").c_str()),
                     (p + "running_mean").c_str(), {out});
      ly.running_var =
          require<T>(as_ndarray(entry(spec, "running_var", p), (p + "running_var").c_str()),
                     (p + "running_var").c_str(), {out});
    }
    ly.eps = entry(spec, "eps", p).cast<double>();
    width = out;
  }
  return layers;
}

// ---- recurrent layers and stacks ----------------------------------------------------------

// A recurrent description: its layers in PyTorch's order (index l * D + d, D = 2 when
// bidirectional), all of one kind and hidden size.
template <class T>
struct RecurrentStack {
  std::vector<RecurrentWeights<T>> layers;
  std::size_t num_layers = 1;
  bool bidirectional = false;
};

// Whether a recurrent description is a stack ({"num_layers", "bidirectional", "layers"}).
inline bool is_stack(const py::dict& spec) { return spec.contains("layers"); }

// One recurrent layer's dict; names in messages start with `p` ("" or "layers[i].").
// hidden, input_size < 0: any.
template <class T>
RecurrentWeights<T> parse_recurrent_layer(const py::dict& d, CellKind kind, const std::string& p,
                                          py::ssize_t hidden, py::ssize_t input_size) {
  RecurrentWeights<T> w;
  w.kind = kind;
  const auto whh = as_ndarray(entry(d, "weight_hh", p), (p + "weight_hh").c_str());
  if (whh.ndim() != 2 || whh.shape(1) <= 0)
    throw py::value_error(p + "weight_hh must have shape (G*N, N), got " + shape_str(whh));
  const auto N = hidden < 0 ? whh.shape(1) : hidden, G = static_cast<py::ssize_t>(cell_gates(kind));
  const auto wih = as_ndarray(entry(d, "weight_ih", p), (p + "weight_ih").c_str());
  w.hidden = static_cast<std::size_t>(N);
  w.weight_hh = require<T>(whh, (p + "weight_hh").c_str(), {G * N, N});
  w.weight_ih = require<T>(wih, (p + "weight_ih").c_str(), {G * N, input_size});
  w.input_size = static_cast<std::size_t>(wih.shape(1));
  w.bias_ih = optional_array<T>(entry(d, "bias_ih", p), (p + "bias_ih").c_str(), {G * N});
  w.bias_hh = optional_array<T>(entry(d, "bias_hh", p), (p + "bias_hh").c_str(), {G * N});
  return w;
}

// Why Jacobian analyses refuse a bidirectional model.
inline constexpr const char* kBidirectionalNoJacobian =
    "a bidirectional model is not a dynamical system forward in time (its reverse direction "
    "runs backward in time), so its step Jacobians are not defined; analyse a unidirectional "
    "model or one direction";

// A recurrent description whose kind is `kind`. input_size: the first layer's input size
// (-1: any). allow_bidirectional = false refuses bidirectional stacks (before their layers are
// read) with kBidirectionalNoJacobian.
template <class T>
RecurrentStack<T> parse_recurrent(const py::dict& spec, CellKind kind, py::ssize_t input_size,
                                  bool allow_bidirectional) {
  RecurrentStack<T> out;
  if (!is_stack(spec)) {
    out.layers.push_back(parse_recurrent_layer<T>(spec, kind, "", -1, input_size));
    return out;
  }
  out.bidirectional = entry(spec, "bidirectional", "").cast<bool>();
  if (out.bidirectional && !allow_bidirectional) throw py::value_error(kBidirectionalNoJacobian);
  const auto L = entry(spec, "num_layers", "").cast<py::ssize_t>();
  const py::list list = as_list(spec["layers"], "layers");
  const py::ssize_t D = out.bidirectional ? 2 : 1;
  if (L < 1 || static_cast<py::ssize_t>(list.size()) != L * D)
    throw py::value_error("num_layers = " + std::to_string(L) +
                          (D == 2 ? " with 2 directions needs " + std::to_string(L * D) + " layers"
                                  : std::string(" needs as many layers")) +
                          ", got " + std::to_string(list.size()));
  out.num_layers = static_cast<std::size_t>(L);
  py::ssize_t N = -1;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string p = "layers[" + std::to_string(i) + "].";
    const py::ssize_t I = static_cast<py::ssize_t>(i) < D ? input_size : D * N;
    out.layers.push_back(parse_recurrent_layer<T>(
        as_dict(list[i], "layers[" + std::to_string(i) + "]"), kind, p, N, I));
    N = static_cast<py::ssize_t>(out.layers[0].hidden);
  }
  return out;
}

// ---- whole models ----------------------------------------------------------------------------

// A description's kind: "mlp" (empty cell) or a cell of kCells.
inline bool parse_model_kind(const py::dict& spec, CellKind& cell) {
  const auto kind = entry(spec, "kind", "").cast<std::string>();
  if (kind == kDenseKind) return true;
  for (const auto& e : kCells)
    if (kind == e.name) {
      cell = e.value;
      return false;
    }
  throw py::value_error("model kind must be " +
                        choices(kCells, {kDenseKind, kSsmKind, kSelectiveSsmKind, kSsmStackKind}) +
                        ", got '" + kind + "'");
}

// The cell of a recurrent description.
inline CellKind recurrent_kind(const py::dict& spec) {
  return parse_name(kCells, entry(spec, "kind", "").cast<std::string>(), "recurrent model kind");
}

// The layer dicts of a dense stack's description, or of the bare list of them.
inline py::list dense_layer_list(const py::object& spec) {
  if (!py::isinstance<py::dict>(spec)) return as_list(spec, "spec");
  const auto d = py::reinterpret_borrow<py::dict>(spec);
  const auto kind = entry(d, "kind", "").cast<std::string>();
  if (kind != kDenseKind)
    throw py::value_error(std::string("model kind must be '") + kDenseKind +
                          "' (a dense stack), got '" + kind + "'");
  return as_list(entry(d, "layers", ""), "layers");
}

// ---- state-space layers ------------------------------------------------------------------
//
// {"kind": "ssm", "complex", "a" (S,), "B" (S, d), "C" (d, S), "D" (d,) or None}: the diagonal
// LTI layer discretised (model.hpp's SsmWeights; S = N real modes or 2N for N complex ones).
// {"kind": "selective_ssm", "in_proj_weight", "in_proj_bias", "conv_weight" (d_inner, d_conv),
// "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A" (d_inner, d_state),
// "D", "out_proj_weight", "out_proj_bias"}: Mamba's selective layer (SelectiveSsmWeights).

// {"kind": "ssm_stack", "blocks": [{"layer": an "ssm" or "selective_ssm" description, "norm":
// bool, "norm_weight" (d,) or None, "norm_bias" (d,) or None, "eps", "residual": bool}, ...]}: a
// stack of state-space blocks over time (model.hpp's SsmStackOp).

// 1: an LTI SSM description, 2: a selective one, 3: a stack of them, 0: none of these.
inline int ssm_kind(const py::dict& spec) {
  if (!spec.contains("kind")) return 0;
  const auto kind = spec["kind"].cast<std::string>();
  return kind == kSsmKind ? 1 : kind == kSelectiveSsmKind ? 2 : kind == kSsmStackKind ? 3 : 0;
}

template <class T>
SsmWeights<T> parse_ssm(const py::dict& d) {
  SsmWeights<T> w;
  w.complex = entry(d, "complex", "").cast<bool>();
  const auto a = as_ndarray(entry(d, "a", ""), "a");
  if (a.ndim() != 1 || a.shape(0) < 1 || (w.complex && a.shape(0) % 2))
    throw py::value_error(std::string("a must have shape (S,) with S ") +
                          (w.complex ? "= 2 N > 0 (complex modes as pairs)" : "> 0") + ", got " +
                          shape_str(a));
  const py::ssize_t S = a.shape(0);
  w.a = require<T>(a, "a", {S});
  const auto B = as_ndarray(entry(d, "B", ""), "B");
  w.B = require<T>(B, "B", {S, -1});
  const py::ssize_t I = B.shape(1);
  if (I < 1) throw py::value_error("B must have at least one input column, got " + shape_str(B));
  w.C = require<T>(as_ndarray(entry(d, "C", ""), "C"), "C", {I, S});
  w.D = optional_array<T>(entry(d, "D", ""), "D", {I});
  w.input_size = static_cast<std::size_t>(I);
  w.modes = static_cast<std::size_t>(w.complex ? S / 2 : S);
  return w;
}

template <class T>
SelectiveSsmWeights<T> parse_selective_ssm(const py::dict& d) {
  SelectiveSsmWeights<T> w;
  auto arr = [&](const char* key) { return as_ndarray(entry(d, key, ""), key); };
  const auto A = arr("A");
  if (A.ndim() != 2 || A.shape(0) < 1 || A.shape(1) < 1)
    throw py::value_error("A must have shape (d_inner, d_state), got " + shape_str(A));
  const py::ssize_t di = A.shape(0), n = A.shape(1);
  w.A = require<T>(A, "A", {di, n});
  const auto win = arr("in_proj_weight");
  w.in_proj_weight = require<T>(win, "in_proj_weight", {2 * di, -1});
  const py::ssize_t dm = win.shape(1);
  if (dm < 1) throw py::value_error("in_proj_weight has no input columns: " + shape_str(win));
  w.in_proj_bias = optional_array<T>(entry(d, "in_proj_bias", ""), "in_proj_bias", {2 * di});
  const auto cw = arr("conv_weight");
  w.conv_weight = require<T>(cw, "conv_weight", {di, -1});
  const py::ssize_t dc = cw.shape(1);
  if (dc < 2)
    throw py::value_error("conv_weight must have shape (d_inner, d_conv) with d_conv >= 2, got " +
                          shape_str(cw));
  w.conv_bias = optional_array<T>(entry(d, "conv_bias", ""), "conv_bias", {di});
  const auto wdt = arr("dt_proj_weight");
  w.dt_proj_weight = require<T>(wdt, "dt_proj_weight", {di, -1});
  const py::ssize_t R = wdt.shape(1);
  if (R < 1) throw py::value_error("dt_proj_weight has no columns (dt_rank = 0)");
  w.dt_proj_bias = require<T>(arr("dt_proj_bias"), "dt_proj_bias", {di});
  w.x_proj_weight = require<T>(arr("x_proj_weight"), "x_proj_weight", {R + 2 * n, di});
  w.D = optional_array<T>(entry(d, "D", ""), "D", {di});
  w.out_proj_weight = require<T>(arr("out_proj_weight"), "out_proj_weight", {dm, di});
  w.out_proj_bias = optional_array<T>(entry(d, "out_proj_bias", ""), "out_proj_bias", {dm});
  w.d_model = static_cast<std::size_t>(dm);
  w.d_inner = static_cast<std::size_t>(di);
  w.d_state = static_cast<std::size_t>(n);
  w.d_conv = static_cast<std::size_t>(dc);
  w.dt_rank = static_cast<std::size_t>(R);
  return w;
}

template <class T>
std::vector<SsmBlockWeights<T>> parse_ssm_stack(const py::dict& spec) {
  const py::list list = as_list(entry(spec, "blocks", ""), "blocks");
  if (list.empty()) throw py::value_error("blocks must hold at least one block, got none");
  std::vector<SsmBlockWeights<T>> out;
  py::ssize_t d = -1;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string p = "blocks[" + std::to_string(i) + "].";
    const py::dict b = as_dict(list[i], "blocks[" + std::to_string(i) + "]");
    const py::dict layer = as_dict(entry(b, "layer", p), p + "layer");
    SsmBlockWeights<T> w;
    const int sk = ssm_kind(layer);
    if (sk == 1)
      w.layer = parse_ssm<T>(layer);
    else if (sk == 2)
      w.layer = parse_selective_ssm<T>(layer);
    else
      throw py::value_error(p + "layer must be an 'ssm' or 'selective_ssm' description");
    const py::ssize_t di = static_cast<py::ssize_t>(std::visit(
        [](const auto& lw) {
          if constexpr (std::is_same_v<std::decay_t<decltype(lw)>, SsmWeights<T>>)
            return lw.input_size;
          else
            return lw.d_model;
        },
        w.layer));
    if (d >= 0 && di != d)
      throw py::value_error(p + "layer has " + std::to_string(di) + " features, blocks[0] has " +
                            std::to_string(d) + " (a stack keeps the stream's width)");
    d = di;
    w.norm = entry(b, "norm", p).cast<bool>();
    w.norm_weight = optional_array<T>(entry(b, "norm_weight", p), (p + "norm_weight").c_str(), {d});
    w.norm_bias = optional_array<T>(entry(b, "norm_bias", p), (p + "norm_bias").c_str(), {d});
    w.eps = entry(b, "eps", p).cast<double>();
    if (!(w.eps > 0)) throw py::value_error(p + "eps must be positive");
    w.residual = entry(b, "residual", p).cast<bool>();
    out.push_back(w);
  }
  return out;
}

// Whether a description holds float32 parameters (else float64): its first weight's dtype.
inline bool is_float32(const py::dict& spec) {
  if (ssm_kind(spec) == 3) {
    const py::list blocks = as_list(entry(spec, "blocks", ""), "blocks");
    if (blocks.empty()) throw py::value_error("blocks must hold at least one block, got none");
    return is_float32(
        as_dict(entry(as_dict(blocks[0], "blocks[0]"), "layer", "blocks[0]."), "blocks[0].layer"));
  }
  if (const int sk = ssm_kind(spec)) {
    const char* key = sk == 1 ? "a" : "A";
    return has_dtype<float>(as_ndarray(entry(spec, key, ""), key));
  }
  CellKind cell{};
  const bool dense = parse_model_kind(spec, cell);
  py::object w;
  if (dense || is_stack(spec)) {
    const py::list layers = as_list(entry(spec, "layers", ""), "layers");
    if (layers.empty()) throw py::value_error("the model has no layers");
    w = entry(as_dict(layers[0], "layers[0]"), dense ? "weight" : "weight_hh", "layers[0].");
  } else {
    w = entry(spec, "weight_hh", "");
  }
  return has_dtype<float>(as_ndarray(w, dense ? "layers[0].weight" : "weight_hh"));
}

// The per-sample step maps of a description (Jacobian analyses): dense stacks, unidirectional
// recurrent models and state-space layers.
template <class T>
Model<T> parse_model(const py::dict& spec) {
  if (const int sk = ssm_kind(spec))
    return sk == 1   ? Model<T>::ssm(parse_ssm<T>(spec))
           : sk == 2 ? Model<T>::ssm(parse_selective_ssm<T>(spec))
                     : Model<T>::ssm_stack(parse_ssm_stack<T>(spec));
  CellKind cell{};
  if (parse_model_kind(spec, cell))
    return Model<T>::dense(parse_dense_layers<T>(as_list(entry(spec, "layers", ""), "layers"), -1));
  const RecurrentStack<T> st = parse_recurrent<T>(spec, cell, -1, false);
  return Model<T>::recurrent(st.layers);
}

}  // namespace vgcore::bind
