// DataParallel: gradient buckets in reverse parameter order, each flattened and
// all-reduced (average) from the gradient-ready hooks as soon as its last gradient lands,
// strictly in bucket order; finish() starts what backward did not, waits, and copies back.
#include "barbell/dist/data_parallel.hpp"

#include <chrono>

#include "barbell/autograd/autograd.hpp"

namespace barbell::dist {

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

uint64_t fnv(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= (v >> (8 * i)) & 0xff;
    h *= 0x100000001b3ull;
  }
  return h;
}
uint64_t fnv(uint64_t h, const std::string& s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return fnv(h, s.size());
}

}  // namespace

void check_same_across_ranks(ProcessGroup& pg, uint64_t value, const std::string& what) {
  if (pg.size() == 1) return;
  Tensor mine = from_vector<int64_t>({static_cast<int64_t>(value)}, {1}).to(pg.device());
  Tensor all = zeros({pg.size()}, {DType::I64, pg.device()});
  pg.all_gather(all, mine)->wait();
  std::vector<int64_t> v = all.to_vector<int64_t>();
  bool same = true;
  for (int64_t x : v) same = same && x == v[0];
  if (same) return;
  std::string list;
  for (size_t r = 0; r < v.size(); ++r)
    list += fmt::format("{}rank {}: {:#018x}", r ? ", " : "", r, static_cast<uint64_t>(v[r]));
  throw ValueError(fmt::format("{} differs across ranks ({})", what, list));
}

void broadcast_tensors(ProcessGroup& pg, const std::vector<Tensor>& tensors, int root) {
  std::vector<WorkPtr> works;
  std::vector<std::pair<Tensor, Tensor>> copy_back;  // (tensor, contiguous stand-in)
  for (const Tensor& t : tensors) {
    if (t.numel() == 0) continue;
    Tensor c = t.is_contiguous() ? t.detach() : t.detach().contiguous();
    if (!c.same(t)) copy_back.emplace_back(t, c);
    works.push_back(pg.broadcast(c, root));
  }
  for (auto& w : works) w->wait();
  NoGradGuard ng;
  for (auto& [t, c] : copy_back) Tensor(t).copy_(c);
}

struct DataParallel::State {
  struct B {
    Bucket info;
    std::vector<size_t> params;    // indices into `params`
    std::vector<int64_t> offsets;  // in the flat buffer
    Tensor flat;
    WorkPtr work;
    int pending = 0;  // hooks still to fire this step
    bool started = false, from_hook = false;
    Clock::time_point t_start;
  };
  ProcessGroupPtr pg;
  std::vector<std::string> names;
  std::vector<Tensor> params;
  std::vector<size_t> bucket_of;  // per parameter
  std::vector<bool> fired;        // per parameter, this step
  std::vector<B> buckets;
  std::vector<Bucket> infos;
  uint64_t hash = 0;
  size_t next_start = 0;  // buckets start in order
  bool sync = true;
  DataParallelStats stats;
  int inflight = 0;
  Clock::time_point inflight_since;

  // Copies the bucket's gradients into its flat buffer and starts its all-reduce.
  void start(size_t b, bool from_hook) {
    auto t0 = Clock::now();
    B& bk = buckets[b];
    NoGradGuard ng;
    for (size_t k = 0; k < bk.params.size(); ++k) {
      const Tensor& p = params[bk.params[k]];
      Tensor dst = bk.flat.narrow(0, bk.offsets[k], p.numel());
      Tensor g = p.grad();
      if (g.defined())
        dst.copy_(g.reshape({p.numel()}));
      else
        dst.zero_();
    }
    bk.work = pg->all_reduce(bk.flat, ReduceOp::Avg);
    bk.started = true;
    bk.from_hook = from_hook;
    bk.t_start = Clock::now();
    if (inflight++ == 0) inflight_since = bk.t_start;
    stats.pack_s += seconds(t0, bk.t_start);
  }
  void ended() {
    if (--inflight == 0) stats.comm_s += seconds(inflight_since, Clock::now());
  }
  // Notes completions (MPI: also drives progress) of buckets in flight.
  void poll() {
    for (size_t b = 0; b < next_start; ++b) {
      B& bk = buckets[b];
      if (bk.work && bk.work->is_completed()) {
        bk.work.reset();
        ended();
      }
    }
  }
  void on_grad_ready(size_t i) {
    if (!sync) return;
    B& bk = buckets[bucket_of[i]];
    BB_CHECK(
        !bk.started, Error,
        "DataParallel: parameter '{}' received a gradient after its bucket was all-reduced in this step; run "
        "the backward of all but the last micro-step under no_sync(), and call finish() once per step",
        names[i]);
    if (fired[i]) return;
    fired[i] = true;
    --bk.pending;
    // Start every complete bucket whose predecessors have started: the same order on all ranks.
    while (next_start < buckets.size() && buckets[next_start].pending == 0) start(next_start++, true);
    poll();
  }
  void reset_step() {
    next_start = 0;
    std::fill(fired.begin(), fired.end(), false);
    for (auto& bk : buckets) {
      bk.pending = static_cast<int>(bk.params.size());
      bk.started = false;
      bk.work.reset();
    }
  }
};

DataParallel::DataParallel(nn::Module& module, ProcessGroupPtr pg, DataParallelOptions opts)
    : module_(module), pg_(std::move(pg)), st_(std::make_shared<State>()) {
  BB_CHECK(pg_ != nullptr, ValueError, "DataParallel: null process group");
  BB_CHECK(opts.first_bucket_mb > 0 && opts.bucket_mb > 0, ValueError,
           "DataParallel: bucket sizes must be positive (first_bucket_mb {}, bucket_mb {})",
           opts.first_bucket_mb, opts.bucket_mb);
  State& s = *st_;
  s.pg = pg_;
  for (auto& [name, p] : module_.named_parameters()) {
    if (!p.requires_grad()) continue;
    BB_CHECK(p.device() == pg_->device() || pg_->backend() == Backend::Local, DeviceError,
             "DataParallel: parameter '{}' {} is on {}, but the {} process group works on {}", name,
             shape_str(p.shape()), p.device().str(), backend_name(pg_->backend()), pg_->device().str());
    s.names.push_back(name);
    s.params.push_back(p);
  }
  BB_CHECK(!s.params.empty(), ValueError, "DataParallel: the module has no trainable parameters");

  // Buckets: parameters in reverse order, a new bucket when the dtype or device changes or
  // the capacity would be exceeded (a parameter larger than the capacity gets its own).
  const auto cap = [&](size_t b) {
    return static_cast<size_t>((b == 0 ? opts.first_bucket_mb : opts.bucket_mb) * 1024.0 * 1024.0);
  };
  s.bucket_of.assign(s.params.size(), 0);
  for (size_t k = s.params.size(); k-- > 0;) {
    const Tensor& p = s.params[k];
    bool fresh = s.buckets.empty();
    if (!fresh) {
      State::B& cur = s.buckets.back();
      const Tensor& q = s.params[cur.params[0]];
      fresh = q.dtype() != p.dtype() || q.device() != p.device() ||
              cur.info.bytes() + p.nbytes() > cap(s.buckets.size() - 1);
    }
    if (fresh) {
      s.buckets.emplace_back();
      s.buckets.back().info.dtype = p.dtype();
    }
    State::B& bk = s.buckets.back();
    bk.params.push_back(k);
    bk.offsets.push_back(bk.info.numel);
    bk.info.params.push_back(s.names[k]);
    bk.info.numel += p.numel();
    s.bucket_of[k] = s.buckets.size() - 1;
  }
  uint64_t h = 0xcbf29ce484222325ull;
  for (auto& bk : s.buckets) {
    h = fnv(h, bk.params.size());
    h = fnv(h, static_cast<uint64_t>(bk.info.dtype));
    for (size_t k : bk.params) {
      h = fnv(h, s.names[k]);
      for (int64_t d : s.params[k].shape()) h = fnv(h, static_cast<uint64_t>(d));
    }
    bk.flat = zeros({bk.info.numel}, {bk.info.dtype, s.params[bk.params[0]].device()});
    s.infos.push_back(bk.info);
  }
  s.hash = h;
  s.fired.assign(s.params.size(), false);
  s.reset_step();

  // Same layout everywhere, before anything of that layout is sent.
  check_same_across_ranks(
      *pg_, h,
      fmt::format("DataParallel: the gradient bucket layout ({} parameters in {} buckets here; "
                  "every rank must build the same model and use the same bucket sizes)",
                  s.params.size(), s.buckets.size()));
  // Rank 0's parameters (and buffers) everywhere, bucket by bucket.
  {
    NoGradGuard ng;
    std::vector<WorkPtr> works;
    for (auto& bk : s.buckets) {
      for (size_t k = 0; k < bk.params.size(); ++k)
        bk.flat.narrow(0, bk.offsets[k], s.params[bk.params[k]].numel())
            .copy_(s.params[bk.params[k]].detach().reshape({s.params[bk.params[k]].numel()}));
      works.push_back(pg_->broadcast(bk.flat, 0));
    }
    for (size_t b = 0; b < s.buckets.size(); ++b) {
      works[b]->wait();
      auto& bk = s.buckets[b];
      for (size_t k = 0; k < bk.params.size(); ++k) {
        Tensor p = s.params[bk.params[k]];
        p.copy_(bk.flat.narrow(0, bk.offsets[k], p.numel()).view(p.shape()));
      }
    }
    if (opts.broadcast_buffers) {
      std::vector<Tensor> bufs;
      for (auto& [n, b] : module_.named_buffers()) bufs.push_back(b);
      broadcast_tensors(*pg_, bufs, 0);
    }
  }

  std::weak_ptr<State> weak = st_;
  for (size_t i = 0; i < s.params.size(); ++i) {
    Tensor p = s.params[i];
    p.register_grad_ready_hook([weak, i](const Tensor&) {
      if (auto st = weak.lock()) st->on_grad_ready(i);
    });
  }
}

DataParallel::~DataParallel() {
  // Buckets still in flight must finish before their buffers go (errors are dropped: a
  // destructor cannot throw, and a failed group already told its story).
  for (auto& bk : st_->buckets) {
    if (!bk.work) continue;
    try {
      bk.work->wait();
    } catch (...) {}
  }
}

void DataParallel::finish() {
  State& s = *st_;
  while (s.next_start < s.buckets.size()) s.start(s.next_start++, false);
  for (auto& bk : s.buckets) {
    if (bk.work) {
      auto t0 = Clock::now();
      bk.work->wait();
      s.stats.finish_wait_s += seconds(t0, Clock::now());
      bk.work.reset();
      s.ended();
    }
  }
  auto t0 = Clock::now();
  {
    NoGradGuard ng;
    for (auto& bk : s.buckets) {
      for (size_t k = 0; k < bk.params.size(); ++k) {
        Tensor p = s.params[bk.params[k]];
        Tensor avg = bk.flat.narrow(0, bk.offsets[k], p.numel()).view(p.shape());
        Tensor g = p.grad();
        if (g.defined() && g.is_contiguous() && g.dtype() == avg.dtype())
          g.copy_(avg);
        else
          p.set_grad(avg.clone());
      }
      s.stats.bytes += static_cast<double>(bk.info.bytes());
      ++s.stats.buckets;
      if (bk.from_hook) ++s.stats.buckets_started_in_backward;
    }
  }
  s.stats.pack_s += seconds(t0, Clock::now());
  ++s.stats.steps;
  s.reset_step();
}

DataParallel::NoSync::NoSync(DataParallel* dp) : dp_(dp), prev_(dp->st_->sync) { dp_->st_->sync = false; }
DataParallel::NoSync::NoSync(NoSync&& o) noexcept : dp_(o.dp_), prev_(o.prev_) { o.dp_ = nullptr; }
DataParallel::NoSync::~NoSync() {
  if (dp_) dp_->st_->sync = prev_;
}
DataParallel::NoSync DataParallel::no_sync() { return NoSync(this); }
bool DataParallel::sync_enabled() const { return st_->sync; }

const std::vector<DataParallel::Bucket>& DataParallel::buckets() const { return st_->infos; }
uint64_t DataParallel::layout_hash() const { return st_->hash; }
const DataParallelStats& DataParallel::stats() const { return st_->stats; }
void DataParallel::reset_stats() { st_->stats = DataParallelStats{}; }

}  // namespace barbell::dist
