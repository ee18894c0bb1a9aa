// Gradient flow over any Model<T> (placeholder: the generic BPTT sweep lands here).
#include "vgcore/sweeps/model_flow.hpp"

namespace vgcore {}  // namespace vgcore
