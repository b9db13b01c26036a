// Every collective of the MPI process group against values computed here, for each dtype
// and for sizes that do and do not divide by the number of ranks; asynchronous works
// waited out of order; argument errors thrown before anything is sent; split groups.
#include <algorithm>

#include "dist_check.hpp"

namespace bb = barbell;
namespace dist = barbell::dist;
using disttest::max_diff;

namespace {

// Rank r's element i: small integers, exact in every dtype, different on every rank.
double val(int r, int64_t i) { return static_cast<double>(((r + 1) * (i % 7 + 1) + 3 * r) % 23) - 9.0; }

bb::Tensor rank_tensor(int r, int64_t n, bb::DType d) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = val(r, i);
  return bb::from_vector<double>(v, {n}, {d});
}

double tol(bb::DType d) {
  switch (d) {
    case bb::DType::BF16: return 0.07;  // |avg| <= 9: bf16 spacing there is 1/16
    case bb::DType::F16: return 0.005;
    case bb::DType::F32: return 1e-5;
    default: return 1e-12;
  }
}

void test_all_reduce(dist::ProcessGroup& pg, bb::DType d, int64_t n) {
  const int W = pg.size();
  for (dist::ReduceOp op : {dist::ReduceOp::Sum, dist::ReduceOp::Avg, dist::ReduceOp::Max}) {
    if (op == dist::ReduceOp::Avg && !bb::is_floating(d)) continue;
    bb::Tensor t = rank_tensor(pg.rank(), n, d);
    pg.all_reduce(t, op)->wait();
    std::vector<double> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      double s = 0, m = -1e300;
      for (int r = 0; r < W; ++r) {
        s += val(r, i);
        m = std::max(m, val(r, i));
      }
      want[static_cast<size_t>(i)] = op == dist::ReduceOp::Sum ? s : op == dist::ReduceOp::Avg ? s / W : m;
    }
    double diff = max_diff(t, bb::from_vector<double>(want, {n}, {bb::DType::F64}));
    DCHECK(diff <= tol(d), "all_reduce {} {} n={}: max diff {}", dist::reduce_op_name(op), bb::dtype_name(d),
           n, diff);
  }
}

void test_broadcast(dist::ProcessGroup& pg, bb::DType d, int64_t n) {
  for (int root = 0; root < pg.size(); ++root) {
    bb::Tensor t = rank_tensor(pg.rank(), n, d);
    pg.broadcast(t, root)->wait();
    double diff = max_diff(t, rank_tensor(root, n, bb::DType::F64));
    DCHECK(diff == 0, "broadcast from {} {} n={}: max diff {}", root, bb::dtype_name(d), n, diff);
  }
}

void test_reduce_scatter(dist::ProcessGroup& pg, bb::DType d, int64_t n) {
  const int W = pg.size();
  const int64_t c = dist::ProcessGroup::chunk_numel(n, W);
  for (dist::ReduceOp op : {dist::ReduceOp::Sum, dist::ReduceOp::Avg, dist::ReduceOp::Max}) {
    if (op == dist::ReduceOp::Avg && !bb::is_floating(d)) continue;
    bb::Tensor in = rank_tensor(pg.rank(), n, d);
    bb::Tensor out = bb::full({c}, 77.0, {d});  // poison: every element must be written
    pg.reduce_scatter(out, in, op)->wait();
    auto [b, e] = dist::ProcessGroup::chunk_range(n, W, pg.rank());
    std::vector<double> want(static_cast<size_t>(c), 0.0);
    for (int64_t i = b; i < e; ++i) {
      double s = 0, m = -1e300;
      for (int r = 0; r < W; ++r) {
        s += val(r, i);
        m = std::max(m, val(r, i));
      }
      want[static_cast<size_t>(i - b)] = op == dist::ReduceOp::Sum   ? s
                                         : op == dist::ReduceOp::Avg ? s / W
                                                                     : m;
    }
    double diff = max_diff(out, bb::from_vector<double>(want, {c}, {bb::DType::F64}));
    DCHECK(diff <= tol(d), "reduce_scatter {} {} n={} (chunk {}, own [{}, {})): max diff {}",
           dist::reduce_op_name(op), bb::dtype_name(d), n, c, b, e, diff);
    // The input is left alone.
    DCHECK(max_diff(in, rank_tensor(pg.rank(), n, bb::DType::F64)) == 0, "reduce_scatter changed its input");
  }
}

void test_all_gather(dist::ProcessGroup& pg, bb::DType d, int64_t n) {
  const int W = pg.size();
  const int64_t c = dist::ProcessGroup::chunk_numel(n, W);
  // Rank r sends its chunk of the "global" vector val(0, .), garbage past what it owns.
  auto [b, e] = dist::ProcessGroup::chunk_range(n, W, pg.rank());
  std::vector<double> mine(static_cast<size_t>(c), 55.0);
  for (int64_t i = b; i < e; ++i) mine[static_cast<size_t>(i - b)] = val(0, i);
  bb::Tensor in = bb::from_vector<double>(mine, {c}, {d});
  bb::Tensor out = bb::full({n}, 77.0, {d});
  pg.all_gather(out, in)->wait();
  double diff = max_diff(out, rank_tensor(0, n, bb::DType::F64));
  DCHECK(diff == 0, "all_gather {} n={}: max diff {}", bb::dtype_name(d), n, diff);
}

}  // namespace

int main() {
  auto pg = dist::init_mpi();
  pg->set_timeout(60);
  return disttest::run(*pg, [&] {
    const int W = pg->size();
    DCHECK(pg->backend() == dist::Backend::MPI && W >= 2, "expected an MPI group of >= 2 ranks, got {} ranks",
           W);
    const std::vector<int64_t> sizes = {0, 1, 5, 7, 1000, 4099, int64_t(3) * 4096 * 4};
    for (bb::DType d : {bb::kF32, bb::kF64, bb::kBF16, bb::kF16, bb::kI32, bb::kI64}) {
      for (int64_t n : sizes) {
        test_all_reduce(*pg, d, n);
        test_broadcast(*pg, d, n);
        test_reduce_scatter(*pg, d, n);
        test_all_gather(*pg, d, n);
      }
    }
    // Bool goes through the byte-exact collectives.
    {
      bb::Tensor t = bb::from_vector<int64_t>({pg->rank() == 1, 1, 0}, {3}).to(bb::kBool);
      pg->broadcast(t, 1)->wait();
      DCHECK(t.to_vector<int64_t>() == std::vector<int64_t>({1, 1, 0}), "bool broadcast");
    }
    // 2-D tensors: shapes are free, only element counts matter.
    {
      bb::Tensor in = bb::ones({W, 3}, {bb::kF32});
      bb::Tensor out = bb::zeros({1, 3}, {bb::kF32});
      pg->reduce_scatter(out, in, dist::ReduceOp::Sum)->wait();
      DCHECK(max_diff(out, bb::full({1, 3}, W, {bb::kF64})) == 0, "2-D reduce_scatter");
    }
    // Several collectives in flight at once, waited in reverse order.
    {
      std::vector<bb::Tensor> ts;
      std::vector<dist::WorkPtr> ws;
      for (int k = 0; k < 6; ++k) {
        ts.push_back(bb::full({257 * (k + 1)}, pg->rank() + k, {bb::kF32}));
        ws.push_back(pg->all_reduce(ts.back(), dist::ReduceOp::Sum));
      }
      for (int k = 5; k >= 0; --k) ws[static_cast<size_t>(k)]->wait();
      for (int k = 0; k < 6; ++k) {
        double want = W * (W - 1) / 2.0 + W * k;
        DCHECK(max_diff(ts[static_cast<size_t>(k)], bb::full({257 * (k + 1)}, want, {bb::kF64})) == 0,
               "async all_reduce {}", k);
        DCHECK(ws[static_cast<size_t>(k)]->is_completed(), "work {} not completed after wait", k);
      }
    }
    pg->barrier();
    // Bad arguments throw on the calling rank, identically everywhere, before any traffic.
    {
      bb::Tensor nc = bb::zeros({4, 6}, {bb::kF32}).t();
      DEXPECT_THROW(bb::ShapeError, pg->all_reduce(nc), "contiguous");
      DEXPECT_THROW(bb::DTypeError, pg->all_reduce(bb::zeros({4}, {bb::kI32}), dist::ReduceOp::Avg), "avg");
      DEXPECT_THROW(bb::ShapeError,
                    pg->reduce_scatter(bb::zeros({2}, {bb::kF32}), bb::zeros({10 * W + 7}, {bb::kF32})),
                    "reduce_scatter");
      DEXPECT_THROW(bb::ShapeError, pg->all_gather(bb::zeros({10}, {bb::kF32}), bb::zeros({11}, {bb::kF32})),
                    "all_gather");
      DEXPECT_THROW(bb::DTypeError, pg->all_gather(bb::zeros({W}, {bb::kF32}), bb::zeros({1}, {bb::kF64})),
                    "all_gather");
      DEXPECT_THROW(bb::ValueError, pg->broadcast(bb::zeros({3}), W), "root");
      DEXPECT_THROW(bb::DTypeError, pg->all_reduce(bb::zeros({3}, {bb::kBool})), "bool");
    }
    // split: even and odd ranks, each group reduces on its own.
    {
      auto sub = pg->split(pg->rank() % 2);
      const int expect_size = (W + (pg->rank() % 2 == 0 ? 1 : 0)) / 2;
      DCHECK(sub->size() == expect_size && sub->rank() == pg->rank() / 2, "split: rank {} size {}",
             sub->rank(), sub->size());
      bb::Tensor t = bb::full({5}, pg->rank(), {bb::kF64});
      sub->all_reduce(t)->wait();
      double want = 0;
      for (int r = pg->rank() % 2; r < W; r += 2) want += r;
      DCHECK(max_diff(t, bb::full({5}, want, {bb::kF64})) == 0, "split all_reduce");
      auto self = pg->split(pg->rank());
      DCHECK(self->size() == 1 && self->rank() == 0, "split into singletons");
    }
    // The one-rank group (what dist::init() gives a process started alone).
    {
      auto one = dist::single_process_group();
      bb::Tensor t = rank_tensor(3, 10, bb::kF32);
      one->all_reduce(t, dist::ReduceOp::Avg)->wait();
      DCHECK(max_diff(t, rank_tensor(3, 10, bb::kF64)) == 0, "local all_reduce");
      bb::Tensor out = bb::zeros({10}, {bb::kF32});
      one->reduce_scatter(out, t)->wait();
      DCHECK(max_diff(out, t) == 0, "local reduce_scatter");
    }
  });
}
