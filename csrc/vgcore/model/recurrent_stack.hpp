// The description of a recurrent layer with PyTorch's layout (nn.RNN, nn.LSTM, nn.GRU); a
// stack is a list of them in PyTorch's order (index l * D + d). The cells' formulas live in
// layers/{rnn,lstm,gru}.hpp.
#pragma once

#include <cstddef>

#include "vgcore/layers/gru.hpp"
#include "vgcore/layers/lstm.hpp"
#include "vgcore/layers/rnn.hpp"

namespace vgcore {

enum class CellKind : int { rnn_tanh = 0, rnn_relu, lstm, gru };

// Calls f with the traits of the kind's cell (layers/<kind>.hpp: RnnCell, LstmCell, GruCell),
// the one switch from a kind to its cell.
template <class F>
decltype(auto) with_cell(CellKind k, F&& f) {
  switch (k) {
    case CellKind::lstm:
      return f(layers::LstmCell{});
    case CellKind::gru:
      return f(layers::GruCell{});
    default:  // rnn_tanh, rnn_relu
      return f(layers::RnnCell{});
  }
}

// The cell table: what the sweeps and the bindings ask about a kind, from its traits.
// Number of gate blocks stacked in weight_ih / weight_hh (PyTorch order: LSTM i,f,g,o;
// GRU r,z,n).
inline std::size_t cell_gates(CellKind k) {
  return with_cell(k, [](auto c) { return decltype(c)::gates; });
}
// The nonlinearity of a vanilla RNN (gated cells use tanh for their candidate).
inline const char* cell_activation(CellKind k) { return k == CellKind::rnn_relu ? "relu" : "tanh"; }
// Whether b_hh folds into the input projection (a GRU's b_hn sits inside r * (W_hn h + b_hn)).
inline bool cell_folds_bias_hh(CellKind k) {
  return with_cell(k, [](auto c) { return !decltype(c)::input_outside; });
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
