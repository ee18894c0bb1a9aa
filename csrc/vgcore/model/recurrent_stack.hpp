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
