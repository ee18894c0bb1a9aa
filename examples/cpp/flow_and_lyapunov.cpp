// vgcore from C++ alone: the gradient flow (log ||dL/dh_t|| for every step) and the Lyapunov
// exponents of a recurrent network, without Python.
//
// The network is an nn.RNN-style tanh cell (PyTorch's weight layout) whose recurrent matrix is
// a * I, with no input drive: the state decays to 0, where tanh' = 1, so every step multiplies
// the gradient by a. The program checks both analyses against that closed form, log a per step,
// and exits non-zero if they disagree.
//
// Build against an installed vgcore (see CMakeLists.txt beside this file):
//   cmake -S examples/cpp -B build/example -DCMAKE_PREFIX_PATH=<vgcore prefix>
//   cmake --build build/example && build/example/flow_and_lyapunov
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "vgcore/base/control.hpp"
#include "vgcore/analysis/lyapunov.hpp"
#include "vgcore/sweeps/recurrent.hpp"
#include "vgcore/model/model.hpp"

int main() {
  using T = double;
  const std::size_t N = 32, I = 4, steps = 200, batch = 2, k = 4;
  const double a = 0.9;

  // Weights in PyTorch's layout: weight_ih (N, I), weight_hh (N, N); no biases.
  std::vector<T> w_ih(N * I, 0.0), w_hh(N * N, 0.0);
  for (std::size_t i = 0; i < N; ++i) w_hh[i * N + i] = a;
  vgcore::RecurrentWeights<T> w;
  w.kind = vgcore::CellKind::rnn_tanh;
  w.input_size = I;
  w.hidden = N;
  w.weight_ih = w_ih.data();
  w.weight_hh = w_hh.data();

  std::mt19937 rng(0);
  std::normal_distribution<T> normal;
  std::vector<T> x(steps * batch * I, 0.0), h0(batch * N), v0(batch * k * N);
  for (auto& v : h0) v = 1e-4 * normal(rng);  // small: tanh' = 1 - h^2 is 1 to 1e-8
  for (auto& v : v0) v = normal(rng);

  // 1. Gradient flow, loss 0.5 ||h_T||^2 summed over the batch.
  vgcore::RecurrentFlowIO<T> io;
  io.x = x.data();
  io.steps = steps;
  io.batch = batch;
  io.h0 = h0.data();
  vgcore::FlowOptions opt;
  vgcore::Control ctl;  // a callback here would report progress and could cancel
  const vgcore::FlowStats flow = vgcore::recurrent_gradient_flow(w, io, opt, ctl);
  // log ||dL/dh_t|| = log ||dL/dh_T|| + (T - t) log a
  const double per_step = (flow.log_grad_norms[0] - flow.log_grad_norms[steps]) / steps;
  std::printf("gradient flow: log||dL/dh_0|| = %.6f, log||dL/dh_T|| = %.6f\n",
              flow.log_grad_norms[0], flow.log_grad_norms[steps]);
  std::printf("  per step: %.9f (closed form log a = %.9f)\n", per_step, std::log(a));

  // 2. The k largest Lyapunov exponents of the same cell, driven by the same inputs.
  vgcore::LyapunovOptions lo;
  lo.k = k;
  vgcore::LyapunovEngine<T> engine(vgcore::Model<T>::recurrent(w), batch, h0.data(), v0.data(), lo);
  engine.feed(x.data(), steps, steps, ctl);
  engine.finish();
  const std::vector<double> growth = engine.log_growth();  // (batch, k) sums of log|R_ii|
  double worst = 0.0;
  for (std::size_t b = 0; b < batch; ++b) {
    std::printf("lyapunov exponents, sample %zu:", b);
    for (std::size_t j = 0; j < k; ++j) {
      const double lam = growth[b * k + j] / static_cast<double>(engine.accumulated_steps());
      std::printf(" %.9f", lam);
      worst = std::fmax(worst, std::fabs(lam - std::log(a)));
    }
    std::printf("\n");
  }

  const double err = std::fmax(worst, std::fabs(per_step - std::log(a)));
  std::printf("largest deviation from log a: %.2e\n", err);
  return err < 1e-7 ? 0 : 1;
}
