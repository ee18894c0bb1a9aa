// The state-space layer ops (layers/ssm.hpp): row loops over the units of a step.
// (Placeholder: the ops land with the state-space layers.)
#include "vgcore/model/model.hpp"

namespace vgcore {}  // namespace vgcore
