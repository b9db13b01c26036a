// A stand-in for the emulated runtime's side of emu/emu_api.hpp, for the unit tests only: work
// runs at once inside enqueue, and declared ranges are checked against the allocations the tests
// made with stub::alloc (the real runtime, the integrator's, also orders streams and poisons).
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#include "emu_api.hpp"
#include "emu_stub.hpp"

namespace barbell::emu {
namespace {

struct State {
  std::mutex mu;
  std::map<uintptr_t, size_t> allocations;  // base -> bytes
  std::vector<stub::Access> accesses;
  std::vector<stub::Launch> launches;
  std::string fault;
  cudaError_t next_error = cudaSuccess;
};
State& state() {
  static auto* s = new State();
  return *s;
}

bool inside(uintptr_t lo, size_t bytes) {
  State& s = state();
  auto it = s.allocations.upper_bound(lo);
  if (it == s.allocations.begin()) return false;
  --it;
  return lo >= it->first && lo + bytes <= it->first + it->second;
}

void declare(bool write, const void* p, size_t bytes) {
  if (bytes == 0) return;
  const auto lo = reinterpret_cast<uintptr_t>(p);
  State& s = state();
  std::lock_guard<std::mutex> l(s.mu);
  if (!inside(lo, bytes)) {
    std::ostringstream os;
    os << (write ? "write" : "read") << " of " << bytes << " bytes at " << p
       << " outside every device allocation";
    throw Fault(os.str());
  }
  s.accesses.push_back({write, lo, lo + bytes});
}

}  // namespace

cudaError_t enqueue(cudaStream_t stream, const std::string& name, std::function<void()> work) {
  State& s = state();
  {
    std::lock_guard<std::mutex> l(s.mu);
    if (s.next_error != cudaSuccess) {
      const cudaError_t e = s.next_error;
      s.next_error = cudaSuccess;
      return e;
    }
    s.launches.push_back({stream, name});
  }
  try {
    work();
  } catch (const Fault& f) {
    std::lock_guard<std::mutex> l(s.mu);
    s.fault = f.what();
  }
  return cudaSuccess;
}

void device_read(const void* p, size_t bytes) { declare(false, p, bytes); }
void device_write(void* p, size_t bytes) { declare(true, p, bytes); }

bool is_device_range(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> l(state().mu);
  return inside(reinterpret_cast<uintptr_t>(p), bytes);
}

namespace stub {

void* alloc(size_t bytes) {
  const size_t rounded = (bytes + 255) / 256 * 256 + 256;
  void* p = std::aligned_alloc(256, rounded);
  std::memset(p, 0xCD, rounded);
  std::lock_guard<std::mutex> l(state().mu);
  state().allocations[reinterpret_cast<uintptr_t>(p)] = bytes;
  return p;
}

void free(void* p) {
  {
    std::lock_guard<std::mutex> l(state().mu);
    state().allocations.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
}

std::string take_fault() {
  std::lock_guard<std::mutex> l(state().mu);
  std::string f;
  f.swap(state().fault);
  return f;
}

std::vector<Access> take_accesses() {
  std::lock_guard<std::mutex> l(state().mu);
  std::vector<Access> a;
  a.swap(state().accesses);
  return a;
}

std::vector<Launch> take_launches() {
  std::lock_guard<std::mutex> l(state().mu);
  std::vector<Launch> a;
  a.swap(state().launches);
  return a;
}

void fail_next_enqueue(cudaError_t e) {
  std::lock_guard<std::mutex> l(state().mu);
  state().next_error = e;
}

}  // namespace stub
}  // namespace barbell::emu
