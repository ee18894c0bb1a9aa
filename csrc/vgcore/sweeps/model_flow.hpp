// Gradient flow over any Model<T> (placeholder: the generic BPTT sweep lands here).
#pragma once

#include "vgcore/model/model.hpp"
#include "vgcore/sweeps/flow.hpp"
