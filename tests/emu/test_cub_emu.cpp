// The emulated cub::DeviceRadixSort::SortPairs (emu/cub_emu.hpp) against std::stable_sort on the
// key bits compared; CUB's two-phase temporary-storage protocol; kernels/embedding.cu's call.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cub_emu.hpp"
#include "emu_stub.hpp"
#include "gemm_ref.hpp"

using emutest::Buf;
namespace stub = barbell::emu::stub;

namespace {

template <typename K>
void check_sort(const std::vector<K>& keys, int begin_bit, int end_bit, size_t temp_offset = 0) {
  const size_t n = keys.size();
  std::vector<int32_t> vals(n);
  std::iota(vals.begin(), vals.end(), 0);
  Buf kin(n * sizeof(K) + 1), kout(n * sizeof(K) + 1), vin(n * 4 + 1), vout(n * 4 + 1);
  if (n > 0) {
    std::memcpy(kin.p, keys.data(), n * sizeof(K));
    std::memcpy(vin.p, vals.data(), n * 4);
  }
  size_t bytes = 0;
  stub::take_launches();
  // Phase 1: the size, and no work [doc: "When nullptr, the required allocation size is written to
  // temp_storage_bytes and no work is done"].
  REQUIRE(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const K*>(nullptr),
                                          static_cast<K*>(nullptr), static_cast<const int32_t*>(nullptr),
                                          static_cast<int32_t*>(nullptr), static_cast<int>(n), begin_bit,
                                          end_bit) == cudaSuccess);
  CHECK(bytes >= 1);
  CHECK(stub::take_launches().empty());
  // Phase 2, in exactly the storage asked for, at an offset that is not 256-aligned.
  Buf temp(bytes + temp_offset);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(uintptr_t(0x77));
  REQUIRE(cub::DeviceRadixSort::SortPairs(temp.c() + temp_offset, bytes, static_cast<const K*>(kin.p),
                                          static_cast<K*>(kout.p), static_cast<const int32_t*>(vin.p),
                                          static_cast<int32_t*>(vout.p), static_cast<int>(n), begin_bit,
                                          end_bit, s) == cudaSuccess);
  REQUIRE(stub::take_fault().empty());
  const auto launches = stub::take_launches();
  if (n > 0) {
    REQUIRE(launches.size() == 1);
    CHECK(launches[0].stream == s);
    CHECK(launches[0].name == "cub::DeviceRadixSort::SortPairs");
  }
  // The reference: a stable sort on the compared bits (signed keys with the sign bit inverted).
  using U = std::make_unsigned_t<K>;
  auto digit = [&](K k) {
    U u;
    std::memcpy(&u, &k, sizeof u);
    if (std::is_signed_v<K>) u ^= U(1) << (sizeof(U) * 8 - 1);
    const int width = end_bit - begin_bit;
    const uint64_t mask = width >= 64 ? ~uint64_t(0) : ((uint64_t(1) << width) - 1);
    return (static_cast<uint64_t>(u) >> begin_bit) & mask;
  };
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return digit(keys[a]) < digit(keys[b]); });
  std::vector<K> got_k(n);
  std::vector<int32_t> got_v(n);
  if (n > 0) {
    std::memcpy(got_k.data(), kout.p, n * sizeof(K));
    std::memcpy(got_v.data(), vout.p, n * 4);
  }
  for (size_t i = 0; i < n; ++i) {
    INFO("n " << n << " bits [" << begin_bit << ", " << end_bit << ") position " << i);
    REQUIRE(got_v[i] == order[i]);
    REQUIRE(got_k[i] == keys[static_cast<size_t>(order[i])]);
  }
  // The inputs are not altered; nothing past the outputs is written.
  CHECK((n == 0 || std::memcmp(kin.p, keys.data(), n * sizeof(K)) == 0));
  CHECK((n == 0 || std::memcmp(vin.p, vals.data(), n * 4) == 0));
  CHECK(emutest::untouched(kout.c() + n * sizeof(K), 1));
  CHECK(emutest::untouched(vout.c() + n * 4, 1));
}

}  // namespace

TEST_CASE("SortPairs is a stable sort on bits [begin_bit, end_bit)") {
  std::mt19937_64 rng(17);
  for (size_t n : {size_t(0), size_t(1), size_t(2), size_t(7), size_t(255), size_t(256), size_t(257),
                   size_t(1001), size_t(4097)}) {
    std::vector<uint32_t> dup(n), wide(n);
    for (auto& k : dup) k = static_cast<uint32_t>(rng() % 50);  // many duplicates
    for (auto& k : wide) k = static_cast<uint32_t>(rng());
    check_sort(dup, 0, 32);
    check_sort(dup, 0, 6);  // embedding.cu's range for V = 50: every key's bits
    check_sort(dup, 0, 3);  // fewer bits than the keys have: ties on the rest keep input order
    check_sort(wide, 0, 32);
    check_sort(wide, 4, 13);  // a middle range, two passes of uneven width
    check_sort(wide, 8, 24, 8);
    check_sort(wide, 5, 5);  // no bits: a copy
    std::vector<int32_t> sgn(n);
    for (auto& k : sgn) k = static_cast<int32_t>(rng() % 201) - 100;
    check_sort(sgn, 0, 32);
  }
}

TEST_CASE("SortPairs' temporary-storage protocol and its refusals") {
  const int n = 100;
  Buf kin(n * 4), kout(n * 4), vin(n * 4), vout(n * 4);
  auto* ki = static_cast<const uint32_t*>(kin.p);
  auto* ko = static_cast<uint32_t*>(kout.p);
  auto* vi = static_cast<const int32_t*>(vin.p);
  auto* vo = static_cast<int32_t*>(vout.p);
  size_t bytes = 0;
  REQUIRE(cub::DeviceRadixSort::SortPairs(nullptr, bytes, ki, ko, vi, vo, n, 0, 7) == cudaSuccess);
  Buf temp(bytes);
  SECTION("storage smaller than asked -> cudaErrorInvalidValue, and nothing runs") {
    size_t less = bytes - 1;
    stub::take_launches();
    CHECK(cub::DeviceRadixSort::SortPairs(temp.p, less, ki, ko, vi, vo, n, 0, 7) == cudaErrorInvalidValue);
    CHECK(stub::take_launches().empty());
    CHECK(emutest::untouched(kout.p, n * 4));
  }
  SECTION("overlapping ranges (in place) -> cudaErrorInvalidValue") {
    CHECK(cub::DeviceRadixSort::SortPairs(temp.p, bytes, ki, static_cast<uint32_t*>(kin.p), vi, vo, n, 0,
                                          7) == cudaErrorInvalidValue);
    CHECK(cub::DeviceRadixSort::SortPairs(temp.p, bytes, ki, ko, vi, reinterpret_cast<int32_t*>(kout.c() + 8),
                                          n, 0, 7) == cudaErrorInvalidValue);
  }
  SECTION("a bit range outside the key -> cudaErrorInvalidValue") {
    CHECK(cub::DeviceRadixSort::SortPairs(temp.p, bytes, ki, ko, vi, vo, n, 0, 33) == cudaErrorInvalidValue);
    CHECK(cub::DeviceRadixSort::SortPairs(temp.p, bytes, ki, ko, vi, vo, n, 9, 8) == cudaErrorInvalidValue);
    CHECK(cub::DeviceRadixSort::SortPairs(temp.p, bytes, ki, ko, vi, vo, n, -1, 8) == cudaErrorInvalidValue);
  }
  SECTION(
      "the storage is really used, through declared device accesses: storage past the allocation faults") {
    Buf keys(n * 4);
    std::mt19937_64 rng(1);
    for (int i = 0; i < n; ++i) static_cast<uint32_t*>(keys.p)[i] = static_cast<uint32_t>(rng() % 128);
    size_t claimed = bytes;  // claimed, but only 100 bytes of it are inside the allocation
    REQUIRE(cub::DeviceRadixSort::SortPairs(temp.c() + bytes - 100, claimed,
                                            static_cast<const uint32_t*>(keys.p), ko, vi, vo, n, 0,
                                            16) == cudaSuccess);  // two passes: the first one to temp
    CHECK(stub::take_fault().find("outside every device allocation") != std::string::npos);
  }
  SECTION("an enqueue error is returned") {
    stub::fail_next_enqueue(cudaErrorInvalidResourceHandle);
    CHECK(cub::DeviceRadixSort::SortPairs(temp.p, bytes, ki, ko, vi, vo, n, 0, 7) ==
          cudaErrorInvalidResourceHandle);
  }
  SECTION("n == 0 asks for one byte and runs nothing") {
    size_t b0 = 0;
    REQUIRE(cub::DeviceRadixSort::SortPairs(nullptr, b0, ki, ko, vi, vo, 0, 0, 7) == cudaSuccess);
    CHECK(b0 == 1);
    stub::take_launches();
    REQUIRE(cub::DeviceRadixSort::SortPairs(temp.p, b0, ki, ko, vi, vo, 0, 0, 7) == cudaSuccess);
    CHECK(stub::take_launches().empty());
  }
}

TEST_CASE("kernels/embedding.cu's call sequence") {
  // ids of a V = 1000 vocabulary, the bits it sorts on, one scratch allocation holding keys and
  // positions (in and out) and CUB's storage, as the backward does.
  const int64_t V = 1000, n = 333;
  int end_bit = 1;
  while (end_bit < 32 && (uint64_t(1) << end_bit) < static_cast<uint64_t>(V)) ++end_bit;
  size_t sort_bytes = 0;
  REQUIRE(cub::DeviceRadixSort::SortPairs(
              nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
              static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(n), 0,
              end_bit, nullptr) == cudaSuccess);
  auto align_up = [](size_t v) { return (v + 255) / 256 * 256; };
  const size_t ids_bytes = align_up(n * 4);
  Buf scratch(4 * ids_bytes + align_up(sort_bytes) + 256);
  char* base = scratch.c();
  auto* keys_in = reinterpret_cast<uint32_t*>(base);
  auto* keys_out = reinterpret_cast<uint32_t*>(base + ids_bytes);
  auto* pos_in = reinterpret_cast<int32_t*>(base + 2 * ids_bytes);
  auto* pos_out = reinterpret_cast<int32_t*>(base + 3 * ids_bytes);
  std::mt19937_64 rng(8);
  std::vector<uint32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[static_cast<size_t>(i)] = static_cast<uint32_t>(rng() % V);
    keys_in[i] = ids[static_cast<size_t>(i)];
    pos_in[i] = static_cast<int32_t>(i);
  }
  size_t temp_bytes = sort_bytes;
  REQUIRE(cub::DeviceRadixSort::SortPairs(base + 4 * ids_bytes, temp_bytes, keys_in, keys_out, pos_in,
                                          pos_out, static_cast<int>(n), 0, end_bit, nullptr) == cudaSuccess);
  REQUIRE(stub::take_fault().empty());
  for (int64_t i = 1; i < n; ++i) {
    REQUIRE(keys_out[i - 1] <= keys_out[i]);
    if (keys_out[i - 1] == keys_out[i]) REQUIRE(pos_out[i - 1] < pos_out[i]);  // each id's positions in order
  }
  for (int64_t i = 0; i < n; ++i) REQUIRE(ids[static_cast<size_t>(pos_out[i])] == keys_out[i]);
}
