// Helpers shared by the tests: float64 comparisons, random inputs, temp paths.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "barbell/barbell.hpp"

namespace bbtest {

inline std::string tmp_path(const std::string& name) { return std::string(BARBELL_TEST_TMPDIR) + "/" + name; }

// Max |a - b| over all elements, after converting both to float64 on the CPU.
inline double max_abs_diff(const barbell::Tensor& a, const barbell::Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  auto va = a.to_vector<double>();
  auto vb = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::isnan(va[i]) || std::isnan(vb[i])) return INFINITY;
    m = std::max(m, std::abs(va[i] - vb[i]));
  }
  return m;
}

inline void require_close(const barbell::Tensor& a, const barbell::Tensor& b, double atol = 1e-5, double rtol = 1e-5) {
  REQUIRE(a.shape() == b.shape());
  auto va = a.to_vector<double>();
  auto vb = b.to_vector<double>();
  for (size_t i = 0; i < va.size(); ++i) {
    INFO("element " << i << ": " << va[i] << " vs " << vb[i]);
    REQUIRE(std::abs(va[i] - vb[i]) <= atol + rtol * std::abs(vb[i]));
  }
}

inline void require_gradcheck(const std::function<barbell::Tensor(const std::vector<barbell::Tensor>&)>& f,
                              const std::vector<barbell::Tensor>& inputs, double atol = 1e-6, double rtol = 1e-4) {
  auto r = barbell::autograd::gradcheck(f, inputs, 1e-6, atol, rtol);
  INFO(r.message);
  REQUIRE(r.ok);
}

}  // namespace bbtest
