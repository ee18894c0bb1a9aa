#include "vgcore/model/tangent_map.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace vgcore {

template <class T>
void tangent_map(const Model<T>& m, std::size_t step, const T* x_t, const T* states,
                 std::size_t batch, const T* V, const T* W, std::size_t k, T* y, T* jv, T* jtw) {
  if (m.is_dense() && step >= m.n_layers())
    throw std::invalid_argument("step out of range: the model has " + std::to_string(m.n_layers()) +
                                " layers, got step " + std::to_string(step));
  if (!m.is_dense() && x_t == nullptr)
    throw std::invalid_argument("a recurrent step needs its input x_t");
  const std::size_t s = m.is_dense() ? step : 0;
  const std::size_t din = m.in_dim(s), dout = m.out_dim(s);
  std::vector<T> proj;
  if (!m.is_dense()) {
    proj.resize(batch * m.proj_cols());
    m.project_inputs(x_t, batch, proj.data());
  }
  const std::size_t C = m.cache_size(s), gc = m.gemm_cols(s);
  std::vector<T> cache(batch * C), U(std::max(batch, k) * gc);
  m.gemm_rows(s, states, din, batch, U.data(), gc);
  m.state_update(s, proj.empty() ? nullptr : proj.data(), U.data(), gc, states, din, y, dout,
                 cache.data(), batch);
  for (std::size_t b = 0; b < batch; ++b) {
    m.jvp(s, cache.data() + b * C, V + b * k * din, jv + b * k * dout, k, U.data());
    m.vjp(s, cache.data() + b * C, W + b * k * dout, jtw + b * k * din, k, U.data());
  }
}

template void tangent_map<float>(const Model<float>&, std::size_t, const float*, const float*,
                                 std::size_t, const float*, const float*, std::size_t, float*,
                                 float*, float*);
template void tangent_map<double>(const Model<double>&, std::size_t, const double*, const double*,
                                  std::size_t, const double*, const double*, std::size_t, double*,
                                  double*, double*);

}  // namespace vgcore
