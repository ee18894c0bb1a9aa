// Gradient flow over any Model<T>: the one BPTT sweep every layer kind gets from the layer
// contract, with nothing kind-specific in it.
//
// The forward pass runs Model::step for every step (time steps, or the layers of a dense stack)
// and keeps each step's per-sample cache; the backward pass pulls the cotangent of the state
// through Model::vjp, one sample at a time, carrying a power-of-two scale (stored = true *
// 2^scale), so norms far below or above the type's range stay exact. Batch-parallel over
// samples, interruptible.
//
// A layer kind needs only its op's step and vjp to be analysed here. The dense stacks and the
// RNN / LSTM / GRU stacks also have fused sweeps (sweeps/dense.cpp, sweeps/recurrent.cpp): the
// fast paths, which batch the samples into GEMMs, add parameter- and input-gradient norms and
// gate statistics, and are checked against this sweep.
#pragma once

#include <cstddef>
#include <vector>

#include "vgcore/base/control.hpp"
#include "vgcore/model/model.hpp"
#include "vgcore/sweeps/flow.hpp"

namespace vgcore {

// A named block of the state: layer `layer`'s part `part` (a recurrent layer's h, c, ...),
// columns [offset, offset + width) of a state row. On the depth axis the whole state is one
// segment, whose width changes from state to state (width 0 here).
struct StateSegment {
  std::size_t layer = 0, part = 0, offset = 0, width = 0;
};

template <class T>
struct ModelFlowIO {
  const T* x = nullptr;   // time axis: (T, B, input_size); depth: (B, in_dim(0))
  std::size_t steps = 0;  // time axis: T (depth: ignored, the model's layers)
  std::size_t batch = 0;  // B
  const T* h0 = nullptr;  // time axis: (B, D) the state entering step 0, or null (zeros)
  // The loss's cotangent on the model's output (the columns output_segment() names; depth: the
  // whole last state): (B, n_out) on the last output, or (T, B, n_out) on every step's output
  // when per_step (time axis). Null: the output itself (L = 0.5 ||y_last||^2).
  const T* cotangent = nullptr;
  bool cotangent_per_step = false;
  T* y = nullptr;      // (B, n_out): the last output, or null
  T* grads = nullptr;  // time axis: (T+1, B, D) dL/dh_s for every state, or null
};

struct ModelFlowStats {
  std::vector<StateSegment> segments;
  std::size_t n_states = 0;               // S + 1
  std::vector<double> log_grad_norms;     // segments x n_states: log ||dL/d segment||
  std::vector<double> act_mean, act_std;  // segments x S: of each segment leaving each step
  std::vector<unsigned char> nonfinite;   // S: the state leaving that step holds inf / NaN
};

// The segments of a model's state (time axis: every layer's parts; depth: one).
template <class T>
std::vector<StateSegment> state_segments(const Model<T>& m);

// The segment holding the model's output: the top layer's first part (a recurrent layer's h);
// depth axis: the whole last state.
template <class T>
StateSegment output_segment(const Model<T>& m);

template <class T>
ModelFlowStats model_gradient_flow(const Model<T>& m, const ModelFlowIO<T>& io,
                                   const FlowOptions& opt, Control& ctl);

}  // namespace vgcore
