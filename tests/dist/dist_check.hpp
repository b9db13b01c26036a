// A tiny check harness for tests that run as N ranks under mpirun: failed checks print
// "[rank r] FAIL file:line: ..." and are counted; the counts are summed over ranks at the
// end so every rank exits 1 if any rank failed. An exception escaping a test aborts the
// job (dist::abort_job) so the other ranks do not hang in a collective.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "barbell/barbell.hpp"

namespace disttest {

inline int g_rank = 0;
inline int g_failures = 0;

inline void fail(const char* file, int line, const std::string& msg) {
  ++g_failures;
  std::fprintf(stderr, "[rank %d] FAIL %s:%d: %s\n", g_rank, file, line, msg.c_str());
  std::fflush(stderr);
}

#define DCHECK(cond, ...)                                                                                    \
  do {                                                                                                       \
    if (!(cond)) ::disttest::fail(__FILE__, __LINE__, std::string(#cond) + ": " + fmt::format(__VA_ARGS__)); \
  } while (0)

// Expects `f` to throw E whose message contains `needle`.
template <typename E>
void expect_throw(const char* file, int line, const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const E& e) {
    if (std::string(e.what()).find(needle) == std::string::npos)
      fail(file, line, fmt::format("the error '{}' does not mention '{}'", e.what(), needle));
    return;
  } catch (const std::exception& e) {
    fail(file, line, fmt::format("threw the wrong type: {}", e.what()));
    return;
  }
  fail(file, line, fmt::format("did not throw (expected an error mentioning '{}')", needle));
}
#define DEXPECT_THROW(E, stmt, needle) \
  ::disttest::expect_throw<E>(         \
      __FILE__, __LINE__, [&] { stmt; }, needle)

// max |a - b| / (atol + rtol |b|) <= 1 elementwise; returns the worst |a - b|.
inline double max_diff(const barbell::Tensor& a, const barbell::Tensor& b) {
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  if (va.size() != vb.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::isnan(va[i]) || std::isnan(vb[i])) return INFINITY;
    m = std::max(m, std::abs(va[i] - vb[i]));
  }
  return m;
}

// Runs the test body; returns the process exit code (0 only if no rank failed).
inline int run(barbell::dist::ProcessGroup& pg, const std::function<void()>& body) {
  g_rank = pg.rank();
  try {
    body();
  } catch (const std::exception& e) {
    barbell::dist::abort_job(fmt::format("test threw: {}", e.what()));
    return 1;
  }
  barbell::Tensor f = barbell::from_vector<int64_t>({g_failures}, {1}).to(pg.device());
  pg.all_reduce(f, barbell::dist::ReduceOp::Sum)->wait();
  const int64_t total = f.item<int64_t>();
  if (pg.rank() == 0)
    std::printf("%s: %lld failure(s) over %d rank(s)\n", total ? "FAILED" : "PASSED",
                static_cast<long long>(total), pg.size());
  return total ? 1 : 0;
}

}  // namespace disttest
