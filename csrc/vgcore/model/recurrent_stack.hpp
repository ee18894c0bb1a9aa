// The description of a recurrent layer with PyTorch's layout (nn.RNN, nn.LSTM, nn.GRU); a
// stack is a list of them in PyTorch's order (index l * D + d). The cells' formulas live in
// layers/{rnn,lstm,gru}.hpp.
#pragma once

#include <cstddef>

namespace vgcore {

enum class CellKind : int { rnn_tanh = 0, rnn_relu, lstm, gru };

// Number of gate blocks stacked in weight_ih / weight_hh (PyTorch order: LSTM i,f,g,o;
// GRU r,z,n).
inline std::size_t cell_gates(CellKind k) {
  return k == CellKind::lstm ? 4 : (k == CellKind::gru ? 3 : 1);
}

// The cell table: what the sweeps and the bindings ask about a kind, in one place.
// State parts: (h) or, for an LSTM, (h, c).
inline std::size_t cell_state_parts(CellKind k) { return k == CellKind::lstm ? 2 : 1; }
// Units of the per-sample cache the model keeps per hidden unit (layers/<kind>.hpp).
inline std::size_t cell_cache_units(CellKind k) {
  return k == CellKind::lstm ? 6 : (k == CellKind::gru ? 5 : 1);
}
// The nonlinearity of a vanilla RNN (gated cells use tanh for their candidate).
inline const char* cell_activation(CellKind k) { return k == CellKind::rnn_relu ? "relu" : "tanh"; }
// Whether b_hh folds into the input projection (a GRU's b_hn sits inside r * (W_hn h + b_hn)).
inline bool cell_folds_bias_hh(CellKind k) { return k != CellKind::gru; }

template <class T>
struct RecurrentWeights {
  CellKind kind = CellKind::rnn_tanh;
  std::size_t input_size = 0, hidden = 0;
  const T* weight_ih = nullptr;  // (G*N, input_size)
  const T* weight_hh = nullptr;  // (G*N, N)
  const T* bias_ih = nullptr;    // (G*N) or null
  const T* bias_hh = nullptr;    // (G*N) or null
};

}  // namespace vgcore
