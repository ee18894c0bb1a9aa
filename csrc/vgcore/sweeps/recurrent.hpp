// Recurrent networks with PyTorch's semantics and parameter layout (nn.RNN, nn.LSTM, nn.GRU,
// single-layer, stacked and bidirectional): forward over the whole sequence and backward through
// time in one call. The cells' formulas live in layers/{rnn,lstm,gru}.hpp.
#pragma once

#include <cstddef>
#include <vector>

#include "vgcore/base/activations.hpp"
#include "vgcore/base/control.hpp"
#include "vgcore/model/recurrent_stack.hpp"
#include "vgcore/sweeps/flow.hpp"

namespace vgcore {

template <class T>
struct RecurrentFlowIO {
  const T* x = nullptr;  // (T, B, input_size)
  std::size_t steps = 0, batch = 0;
  const T* h0 = nullptr;  // (B, N) or null (zeros)
  const T* c0 = nullptr;  // LSTM: (B, N) or null (zeros)
  // dL/dh: null => h_T (loss 0.5 ||h_T||^2); else (B, N) at h_T, or (T, B, N) for
  // h_1..h_T when cotangent_per_step.
  const T* cotangent = nullptr;
  bool cotangent_per_step = false;
  const T* cell_cotangent = nullptr;  // LSTM: dL/dc_T (B, N) or null
  T* last_state = nullptr;            // optional (B, N): h_T
  T* last_cell = nullptr;             // optional LSTM (B, N): c_T
  T* states = nullptr;                // optional (T+1, B, N): h_0..h_T
  T* cell_states = nullptr;           // optional LSTM (T+1, B, N): c_0..c_T
  // Kept gradients are the true values rounded to T: +-inf where beyond its range, 0 (or
  // subnormal) below it; the log norms are exact either way.
  T* grads = nullptr;       // optional (T+1, B, N): dL/dh_t
  T* cell_grads = nullptr;  // optional LSTM (T+1, B, N): dL/dc_t
};

// log_param_grad_norms layout: [weight_ih, weight_hh, bias_ih, bias_hh] (-inf if absent).
// gate_saturation: (T, G) fractions per gate; saturation: over all gate units.
template <class T>
FlowStats recurrent_gradient_flow(const RecurrentWeights<T>& w, const RecurrentFlowIO<T>& io,
                                  const FlowOptions& opt, Control& ctl);

// A stack of recurrent layers, as torch.nn.RNN / LSTM / GRU with num_layers and bidirectional:
// layer l > 0 reads the output sequence of layer l - 1 (both directions concatenated, D*N
// features); the reverse direction reads its input from t = T-1 down to 0. Layers are in
// PyTorch's order (index l*D + d, d = 1 the reverse direction); all have the same kind and N.
//
// Positions: the forward direction's state at position t is h_t (after t steps; t = 0 the
// initial state); the reverse direction's state at position t is its output at time t (it has
// read x_{T-1}..x_t), position T its initial state. Kept arrays and per-state norms use these
// positions; per-step arrays are indexed by the output time t (state position t + 1 forward, t
// in reverse).
template <class T>
struct StackFlowIO {
  const T* x = nullptr;  // (T, B, input_size of layer 0)
  std::size_t steps = 0, batch = 0;
  const T* h0 = nullptr;  // (L*D, B, N) or null (zeros)
  const T* c0 = nullptr;  // LSTM: (L*D, B, N) or null
  // dL/d(output), output = the top layer's (T, B, D*N) sequence: null => the loss
  // 0.5 ||output[T-1]||^2; else (B, D*N) at output[T-1], or (T, B, D*N) when per step.
  const T* cotangent = nullptr;
  bool cotangent_per_step = false;
  const T* cell_cotangent = nullptr;  // single-layer unidirectional LSTM only: dL/dc_T (B, N)
  T* output_last = nullptr;           // optional (B, D*N): output[T-1]
  T* h_n = nullptr;                   // optional (L*D, B, N): each layer's last state
  T* c_n = nullptr;                   // optional LSTM (L*D, B, N)
  T* states = nullptr;                // optional (L*D, T+1, B, N), by position
  T* cell_states = nullptr;           // optional LSTM (L*D, T+1, B, N)
  T* grads = nullptr;                 // optional (L*D, T+1, B, N): dL/dh by position
  T* cell_grads = nullptr;            // optional LSTM (L*D, T+1, B, N)
  bool input_grad_norms = false;      // also log ||dL/dx_t|| (one more GEMM for layer 0)
};

struct StackFlowStats {
  std::vector<FlowStats> layers;             // L*D, PyTorch order, see StackFlowIO for indices
  std::vector<double> log_input_grad_norms;  // T, when asked: log ||dL/dx_t||
};

template <class T>
StackFlowStats stacked_gradient_flow(const std::vector<RecurrentWeights<T>>& layers,
                                     std::size_t num_layers, bool bidirectional,
                                     const StackFlowIO<T>& io, const FlowOptions& opt,
                                     Control& ctl);

}  // namespace vgcore
