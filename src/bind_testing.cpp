// vgcore._core.testing: hooks for the tests only. Some provoke failures the system rarely
// produces; the others expose a kernel's building block (one step's JVP / VJP, the packed GEMM,
// the graded Jacobi SVD, the scratch memory cache) so that it can be checked on its own.
#include <algorithm>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "convert.hpp"
#include "pybind11.hpp"
#include "vgcore/analysis/singular.hpp"
#include "vgcore/base/control.hpp"
#include "vgcore/base/packed_gemm.hpp"
#include "vgcore/base/workspace.hpp"
#include "vgcore/model/tangent_map.hpp"

namespace vgcore::bind {
namespace {

// a (m, k) @ B, B = b (k, n) or b.T for b (n, k) when transposed; + c when c is given.
template <class T>
py::array_t<T> packed_product(const py::array& a, const py::array& b, bool transposed,
                              const py::object& c) {
  if (a.ndim() != 2 || b.ndim() != 2)
    throw py::value_error("a and b must be 2-d, got shapes " + shape_str(a) + " and " +
                          shape_str(b));
  const auto m = a.shape(0), k = a.shape(1);
  const auto n = transposed ? b.shape(0) : b.shape(1);
  const T* pa = require<T>(a, "a", {m, k});
  const T* pb = require<T>(
      b, "b", transposed ? std::vector<py::ssize_t>{n, k} : std::vector<py::ssize_t>{k, n});
  const T* pc = optional_array<T>(c, "c", {m, n});
  py::array_t<T> out({m, n});
  T* po = out.mutable_data();
  py::gil_scoped_release release;
  if (pc) std::copy(pc, pc + m * n, po);
  const auto pm =
      transposed ? PackedMatrix<T>::transposed(pb, n, k, k) : PackedMatrix<T>::rows(pb, k, n, n);
  gemm_packed<T>(m, pa, k, pm, pc ? T(1) : T(0), po, n);
  return out;
}

template <class T>
py::dict tangent_map_impl(const py::dict& model, std::size_t step, const py::object& x_t,
                          const py::array& state, const py::array& V, const py::array& W) {
  const Model<T> m = parse_model<T>(model);
  if (m.is_dense() && step >= m.n_layers())
    throw py::value_error("step must be below the dense stack's " + std::to_string(m.n_layers()) +
                          " layers, got " + std::to_string(step));
  const std::size_t s = m.is_dense() ? step : 0;
  const auto din = static_cast<py::ssize_t>(m.in_dim(s)),
             dout = static_cast<py::ssize_t>(m.out_dim(s));
  const T* h = require<T>(state, "state", {-1, din});
  const auto B = state.shape(0);
  const T* v = require<T>(V, "V", {B, -1, din});
  const auto k = V.shape(1);
  const T* w = require<T>(W, "W", {B, k, dout});
  const T* xp = nullptr;
  if (!m.is_dense()) {
    if (x_t.is_none()) throw py::value_error("x_t is required for a recurrent model, got None");
    xp = require<T>(as_ndarray(x_t, "x_t"), "x_t", {B, static_cast<py::ssize_t>(m.input_size())});
  }
  py::array_t<T> y({B, dout}), jv({B, k, dout}), jtw({B, k, din});
  T *py_ = y.mutable_data(), *pjv = jv.mutable_data(), *pjtw = jtw.mutable_data();
  {
    py::gil_scoped_release release;
    tangent_map(m, step, xp, h, static_cast<std::size_t>(B), v, w, static_cast<std::size_t>(k), py_,
                pjv, pjtw);
  }
  py::dict d;
  d["state"] = y;
  d["jvp"] = jv;
  d["vjp"] = jtw;
  return d;
}

// One step of a state-space layer for a batch: the new state and the layer's output y_t (the
// LTI layer's C h_t + D x_t; the selective block's out_proj(...)).
template <class T>
py::tuple ssm_output_impl(const py::dict& model, const py::array& x_t, const py::array& state) {
  if (!ssm_kind(model))
    throw py::value_error(
        "model must be an 'ssm', 'selective_ssm' or 'ssm_stack' description, "
        "got kind '" +
        entry(model, "kind", "").cast<std::string>() + "'");
  const Model<T> m = parse_model<T>(model);
  const auto S = static_cast<py::ssize_t>(m.in_dim(0)),
             I = static_cast<py::ssize_t>(m.input_size());
  const T* h = require<T>(state, "state", {-1, S});
  const auto B = state.shape(0);
  const T* x = require<T>(as_ndarray(x_t, "x_t"), "x_t", {B, I});
  const auto& layer = m.layer(0);
  const py::ssize_t O =
      std::holds_alternative<SelectiveSsmOp<T>>(layer)
          ? static_cast<py::ssize_t>(std::get<SelectiveSsmOp<T>>(layer).weights().d_model)
          : I;
  py::array_t<T> hn({B, S}), y({B, O});
  T *ph = hn.mutable_data(), *py_ = y.mutable_data();
  {
    py::gil_scoped_release release;
    const std::size_t nb = static_cast<std::size_t>(B), C = m.cache_size(0), gc = m.gemm_cols(0);
    std::vector<T> proj(nb * m.proj_cols()), cache(nb * C), U(nb * gc);
    m.project_inputs(x, nb, proj.data());
    m.state_update(0, proj.data(), U.data(), gc, h, m.in_dim(0), ph, m.out_dim(0), cache.data(),
                   nb);
    std::visit(
        [&](const auto& op) {
          using Op = std::decay_t<decltype(op)>;
          if constexpr (std::is_same_v<Op, SsmOp<T>>)
            op.output(nb, ph, m.out_dim(0), x, static_cast<std::size_t>(I), py_);
          else if constexpr (std::is_same_v<Op, SelectiveSsmOp<T>>)
            for (std::size_t b = 0; b < nb; ++b)
              op.output(cache.data() + b * C, ph + b * m.out_dim(0), py_ + b * O);
          else if constexpr (std::is_same_v<Op, SsmStackOp<T>>)
            for (std::size_t b = 0; b < nb; ++b)  // the stream leaving the top block
              std::copy(U.data() + b * gc, U.data() + b * gc + O, py_ + b * O);
        },
        layer);
  }
  return py::make_tuple(hn, y);
}

}  // namespace

void bind_testing(py::module_& m) {
  auto t = m.def_submodule("testing",
                           "Test hooks (internal): provoke rare failures on purpose, "
                           "check a kernel's building blocks on their own.");
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
  t.def(
      "packed_product",
      [](const py::array& a, const py::array& b, bool transposed,
         const py::object& c) -> py::object {
        if (has_dtype<float>(a)) return packed_product<float>(a, b, transposed, c);
        return packed_product<double>(a, b, transposed, c);
      },
      py::arg("a"), py::arg("b"), py::arg("transposed"), py::arg("c") = py::none(),
      "a @ b (or a @ b.T) + c through the packed-panel GEMM.");
  t.def("packed_gemm_available", &packed_gemm_available,
        "Whether this CPU runs the packed-panel GEMM's SIMD kernels.");
  t.def(
      "workspace_cached", [] { return WorkspacePool::instance().cached(); },
      "Bytes of scratch memory cached between analyses.");
  t.def(
      "workspace_limit", [] { return WorkspacePool::instance().limit(); },
      "The cap on the cached scratch memory, in bytes.");
  t.def(
      "tangent_map",
      [](const py::dict& model, std::size_t step, const py::object& x_t, const py::array& state,
         const py::array& V, const py::array& W) {
        if (is_float32(model)) return tangent_map_impl<float>(model, step, x_t, state, V, W);
        return tangent_map_impl<double>(model, step, x_t, state, V, W);
      },
      py::arg("model"), py::arg("step"), py::arg("x_t"), py::arg("state"), py::arg("V"),
      py::arg("W"), "One step of the model for a batch of states, with J V and J^T W.");
  t.def(
      "ssm_output",
      [](const py::dict& model, const py::array& x_t, const py::array& state) {
        if (is_float32(model)) return ssm_output_impl<float>(model, x_t, state);
        return ssm_output_impl<double>(model, x_t, state);
      },
      py::arg("model"), py::arg("x_t"), py::arg("state"),
      "One step of a state-space layer: (new state (B, S), output y_t (B, d)).");
  t.def(
      "graded_jacobi",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& B,
         const py::array_t<double, py::array::c_style | py::array::forcecast>& d) {
        // B: (r, n), its rows the columns of the graded matrix B^T diag(e^d); d: (r,) log scales.
        if (B.ndim() != 2) throw py::value_error("B must be 2-d (r, n), got shape " + shape_str(B));
        const auto r = B.shape(0), n = B.shape(1);
        if (d.ndim() != 1 || d.shape(0) != r)
          throw py::value_error("d must have shape (" + std::to_string(r) +
                                ",) (one entry per row of B), got " + shape_str(d));
        py::array_t<double> Bc({r, n}), dc(r);
        std::copy(B.data(), B.data() + r * n, Bc.mutable_data());
        std::copy(d.data(), d.data() + r, dc.mutable_data());
        double *pb = Bc.mutable_data(), *pd = dc.mutable_data();
        int sweeps = 0;
        {
          py::gil_scoped_release release;
          sweeps = graded_jacobi(pb, static_cast<std::size_t>(n), static_cast<std::size_t>(r), pd);
        }
        return py::make_tuple(dc, sweeps);
      },
      py::arg("B"), py::arg("d"),
      "Log singular values (unsorted) of B^T diag(e^d) by graded one-sided Jacobi, and the "
      "sweeps it took.");
}

}  // namespace vgcore::bind
