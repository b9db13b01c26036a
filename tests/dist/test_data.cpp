// One process, no launcher: the distributed sampler against io::DataLoader over all
// tokens, the token-range reader, the one-rank group (what dist::init() gives a process
// started alone) under DataParallel and ZeroAdamW, and the errors of backends a build lacks.
#include <cstdlib>
#include <filesystem>

#include "dist_check.hpp"

namespace bb = barbell;
namespace dist = barbell::dist;
using disttest::max_diff;

namespace {

bool same(const bb::Tensor& a, const bb::Tensor& b) {
  return a.shape() == b.shape() && a.to_vector<int64_t>() == b.to_vector<int64_t>();
}

void sampler(const std::string& dir) {
  std::filesystem::create_directories(dir);
  std::vector<std::string> paths;
  std::vector<int32_t> all;
  uint32_t x = 12345;
  int k = 0;
  for (int n : {1000, 37, 2500, 301}) {
    std::vector<uint16_t> toks(static_cast<size_t>(n));
    for (auto& t : toks) {
      x = x * 1664525u + 1013904223u;
      t = static_cast<uint16_t>(x >> 16);
    }
    paths.push_back(fmt::format("{}/shard_{}.bin", dir, k++));
    bb::io::write_token_shard(paths.back(), toks);
    all.insert(all.end(), toks.begin(), toks.end());
  }
  auto shared = std::make_shared<const std::vector<int32_t>>(all);
  DCHECK(dist::count_tokens(paths) == static_cast<int64_t>(all.size()), "count_tokens");
  for (auto [b, e] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {0, 3838}, {999, 1001}, {1036, 1038}, {5, 3700}}) {
    auto got = dist::read_token_range(paths, b, e);
    DCHECK(std::vector<int32_t>(all.begin() + b, all.begin() + e) == got, "read_token_range [{}, {})", b, e);
  }
  DEXPECT_THROW(bb::IOError, dist::read_token_range(paths, 10, 5000), "hold");

  for (int world : {1, 2, 3, 4}) {
    int64_t covered = 0;
    for (int r = 0; r < world; ++r) {
      dist::DistributedTokenLoader dl(paths, 3, 8, 42, r, world);
      bb::io::DataLoader ref(shared, 3, 8, 42, r, world);
      DCHECK(dl.slice_begin() == ref.slice_begin() && dl.slice_end() == ref.slice_end(),
             "world {} rank {}: slice", world, r);
      DCHECK(dl.slice_begin() == covered, "world {} rank {}: slices must tile the tokens", world, r);
      covered = dl.slice_end();
      for (int i = 0; i < 5; ++i) {
        auto [a, b] = dl.next();
        auto [c, d] = ref.next();
        DCHECK(same(a, c) && same(b, d), "world {} rank {} batch {}: differs from io::DataLoader", world, r,
               i);
      }
      // Resume exactly.
      dist::DistributedTokenLoader dl2(paths, 3, 8, 42, r, world);
      dl2.set_state(3);
      dl.set_state(3);
      DCHECK(same(dl.next().first, dl2.next().first), "world {} rank {}: set_state", world, r);
    }
    DCHECK(covered == static_cast<int64_t>(all.size()), "world {}: slices cover {} of {} tokens", world,
           covered, all.size());
  }
  // Different ranks and different seeds draw different windows.
  dist::DistributedTokenLoader a(paths, 4, 8, 1, 0, 2), b(paths, 4, 8, 2, 0, 2);
  DCHECK(!same(a.next().first, b.next().first), "seeds 1 and 2 gave the same batch");
  DEXPECT_THROW(bb::ValueError, dist::DistributedTokenLoader(paths, 4, 2000, 1, 0, 2), "seq_len");
  {
    std::FILE* f = std::fopen((dir + "/bad.bin").c_str(), "wb");
    std::vector<char> junk(2000, 'x');
    std::fwrite(junk.data(), 1, junk.size(), f);
    std::fclose(f);
  }
  DEXPECT_THROW(bb::IOError, dist::count_tokens({dir + "/bad.bin"}), "magic");
}

void local_group() {
  auto pg = dist::init();
  DCHECK(pg->backend() == dist::Backend::Local && pg->size() == 1 && pg->rank() == 0,
         "init() alone: {} of size {}", dist::backend_name(pg->backend()), pg->size());
  bb::nn::GPTConfig c = bb::nn::GPTConfig::tiny();
  c.vocab_size = bb::io::AdditionTask::kVocab;
  c.block_size = 16;
  bb::nn::GPT a(c), b(c), z(c);
  dist::DataParallel ddp(a, pg);
  bb::optim::AdamW oa(a.named_parameters(), {}), ob(b.named_parameters(), {});
  dist::ZeroAdamW oz(z.named_parameters(), pg);
  DCHECK(oz.state_bytes() == oz.unsharded_state_bytes(), "one rank holds all the state");
  bb::io::AdditionTask task(2);
  for (int s = 0; s < 3; ++s) {
    bb::Generator gen(static_cast<uint64_t>(s));
    auto [x, y] = task.batch(6, gen);
    a.loss(x, y).backward();
    b.loss(x, y).backward();
    z.loss(x, y).backward();
    ddp.finish();
    oa.step();
    ob.step();
    oz.step();
    oa.zero_grad();
    ob.zero_grad();
    oz.zero_grad();
  }
  double dab = 0, dzb = 0;
  auto pa = a.parameters(), pb = b.parameters(), pz = z.parameters();
  for (size_t i = 0; i < pa.size(); ++i) {
    dab = std::max(dab, max_diff(pa[i], pb[i]));
    dzb = std::max(dzb, max_diff(pz[i], pb[i]));
  }
  DCHECK(dab == 0, "DataParallel on one rank changed training: {}", dab);
  DCHECK(dzb < 1e-7, "ZeroAdamW on one rank differs from AdamW: {}", dzb);
}

void missing_backends() {
  if (!BARBELL_HAVE_NCCL) {
    DEXPECT_THROW(bb::NcclError, dist::init_threads(), "no NCCL backend");
    dist::InitOptions o;
    o.backend = dist::Backend::NCCL;
    DEXPECT_THROW(bb::NcclError, dist::init(o), "no NCCL backend");
  }
  unsetenv("RANK");
  DEXPECT_THROW(bb::ValueError, dist::init_env(), "RANK");
  setenv("RANK", "1", 1);
  setenv("WORLD_SIZE", "2", 1);
  DEXPECT_THROW(bb::ValueError, dist::init_env(), "Backend::NCCL");
  setenv("RANK", "2", 1);
  dist::InitOptions o;
  o.backend = dist::Backend::NCCL;
  DEXPECT_THROW(bb::ValueError, dist::init_env(o), "outside");
  unsetenv("RANK");
  unsetenv("WORLD_SIZE");
  // With nothing to abort, abort_job reports and returns (the program then exits non-zero).
  dist::abort_job("test_data: abort_job without MPI returns");
}

}  // namespace

int main() {
  bb::set_num_threads(1);
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "RANK", "WORLD_SIZE"}) unsetenv(v);
  auto pg = dist::single_process_group();
  return disttest::run(*pg, [] {
    sampler(std::string(BARBELL_TEST_TMPDIR) + "/dist_data");
    local_group();
    missing_backends();
  });
}
