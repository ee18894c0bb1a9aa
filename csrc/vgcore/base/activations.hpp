// vgcore/activations.hpp -- elementwise activation functions and their derivatives, with
// PyTorch's definitions, parameters and defaults.
//
// The array functions dispatch on the kind once per call and run branch-free, vectorised
// inner loops (see activations.cpp); the math comes from vgcore/fastmath.hpp.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>

namespace vgcore {

enum class ActKind : int {
  identity = 0,
  sigmoid,
  tanh,
  relu,
  leaky_relu,
  elu,
  selu,
  softplus,
  silu,
  gelu,       // exact: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
  gelu_tanh,  // torch approximate='tanh': 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
};

/// SELU constants of torch.nn.SELU.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;

struct Activation {
  ActKind kind = ActKind::identity;
  double alpha = 0.0;  // leaky_relu: negative_slope (torch default 0.01); elu: alpha (default 1);
                       // softplus: beta (default 1); unused (0) otherwise
  double beta = 0.0;   // softplus: threshold (default 20): phi(x) = x where beta*x > threshold
  /// sup_x |phi'(x)|: sigmoid 1/4, tanh/relu/identity/softplus 1, leaky_relu max(1, |slope|),
  /// elu max(1, |alpha|), selu scale*alpha, silu 1.0998, gelu 1.1289, gelu_tanh 1.1290.
  double max_derivative() const;
  /// phi is the identity map: identity, or leaky_relu with negative_slope == 1.
  bool is_linear() const;
};

/// The activation called `name` (case-insensitive; aliases linear/none -> identity,
/// swish -> silu, gelu_erf -> gelu). alpha/beta as in Activation; NaN selects torch's default.
/// Throws std::invalid_argument for an unknown name, for a parameter given to an activation
/// that has none (or a second parameter to one that has one), for an infinite parameter and
/// for softplus beta == 0.
Activation make_activation(const std::string& name, double alpha = NAN, double beta = NAN);

/// Canonical name ("identity", "sigmoid", ..., "gelu_tanh").
std::string activation_name(ActKind kind);

/// y[i] = phi(z[i]) and, if dy != nullptr, dy[i] = phi'(z[i]), for i < n.
/// z may be the same array as y or as dy (in place); partial overlap is not allowed.
/// Derivatives at kinks follow torch autograd: relu'(0) = 0, leaky_relu'(0) = negative_slope,
/// elu'(0) = alpha, selu'(0) = scale*alpha, softplus' = 1 where beta*x > threshold.
/// A NaN input gives NaN for both phi and phi' (torch returns a finite gradient for NaN inputs
/// to relu-like functions); at +-inf the limits are returned where torch gives NaN
/// (silu, gelu, gelu_tanh).
template <class T>
void activation_forward(const Activation& a, const T* z, T* y, T* dy, std::size_t n);

/// dy[i] = phi'(z[i]) for i < n; z may be the same array as dy.
template <class T>
void activation_derivative(const Activation& a, const T* z, T* dy, std::size_t n);

extern template void activation_forward<float>(const Activation&, const float*, float*, float*,
                                               std::size_t);
extern template void activation_forward<double>(const Activation&, const double*, double*, double*,
                                                std::size_t);
extern template void activation_derivative<float>(const Activation&, const float*, float*,
                                                  std::size_t);
extern template void activation_derivative<double>(const Activation&, const double*, double*,
                                                   std::size_t);

}  // namespace vgcore
