// CUB's cub::DeviceRadixSort::SortPairs emulated on the emulated GPU, for the emulated build to
// include instead of <cub/device/device_radix_sort.cuh> (kernels/embedding.cu's call).
//
// From CUB's documentation of DeviceRadixSort (the class and SortPairs comments in
// cub/device/device_radix_sort.cuh, CCCL 3.0 as shipped with CUDA 13.0), cited as [doc: ...]:
//   - the two-phase temporary-storage protocol: "When d_temp_storage is nullptr, the required
//     allocation size is written to temp_storage_bytes and no work is done"; a buffer smaller than
//     that is refused with cudaErrorInvalidValue (CUB's AliasTemporaries);
//   - "DeviceRadixSort is stable"; only the key bits [begin_bit, end_bit) are compared; the
//     output keys are the input keys, reordered;
//   - signed integers sort after "the sign bit is inverted";
//   - "In-place operations are not supported. There must be no overlap between any of the
//     provided ranges" (the emulator refuses an overlap with cudaErrorInvalidValue);
//   - "The contents of the input data are not altered by the sorting operation".
// The sort itself is an LSD radix sort of 8-bit digits that ping-pongs between the output arrays
// and alternate arrays inside the temporary storage, as CUB's does, so the storage is really used.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "emu_api.hpp"

namespace cub {

namespace emu_detail {

constexpr size_t kAlign = 256;  // CUB aligns each temporary allocation to 256 bytes
inline size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

inline cudaError_t refuse(const std::string& why) {
  std::fprintf(stderr, "[emulated CUB] cub::DeviceRadixSort::SortPairs: %s\n", why.c_str());
  return cudaErrorInvalidValue;
}

// The key as the unsigned bit pattern radix sorting orders [doc: "For signed integral values, the
// sign bit is inverted"].
template <typename KeyT>
auto radix_bits(KeyT k) {
  using U = std::make_unsigned_t<KeyT>;
  U u;
  std::memcpy(&u, &k, sizeof u);
  if constexpr (std::is_signed_v<KeyT>) u = static_cast<U>(u ^ (U(1) << (sizeof(U) * 8 - 1)));
  return u;
}

inline bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  const auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return an > 0 && bn > 0 && x < y + bn && y < x + an;
}

}  // namespace emu_detail

struct DeviceRadixSort {
  template <typename KeyT, typename ValueT, typename NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const KeyT* d_keys_in,
                               KeyT* d_keys_out, const ValueT* d_values_in, ValueT* d_values_out,
                               NumItemsT num_items, int begin_bit = 0, int end_bit = sizeof(KeyT) * 8,
                               cudaStream_t stream = 0) {
    static_assert(std::is_integral_v<KeyT> && !std::is_same_v<KeyT, bool>,
                  "the emulated DeviceRadixSort sorts integer keys (what barbell sorts)");
    static_assert(std::is_trivially_copyable_v<ValueT>, "values are copied bytewise");
    namespace d = emu_detail;
    constexpr int kKeyBits = static_cast<int>(sizeof(KeyT) * 8);
    if constexpr (std::is_signed_v<NumItemsT>)
      if (num_items < 0) return d::refuse("num_items is negative");
    const auto n = static_cast<size_t>(num_items);
    // The emulator's own check: CUB does not define a bit range outside the key.
    if (begin_bit < 0 || end_bit > kKeyBits || begin_bit > end_bit)
      return d::refuse("the bit range [" + std::to_string(begin_bit) + ", " + std::to_string(end_bit) +
                       ") is not inside the key's " + std::to_string(kKeyBits) + " bits");

    // What the sort needs: alternate key and value arrays (the "~2N auxiliary storage"), each
    // 256-aligned, plus the slack to align the start [doc: temp_storage_bytes]. An empty
    // problem, or one with no bits to sort (a copy), needs one byte, as CUB asks.
    const bool trivial = n == 0 || begin_bit == end_bit;
    const size_t keys_bytes = d::align_up(n * sizeof(KeyT)), values_bytes = d::align_up(n * sizeof(ValueT));
    const size_t needed = trivial ? 1 : keys_bytes + values_bytes + d::kAlign - 1;
    if (!d_temp_storage) {
      temp_storage_bytes = needed;
      return cudaSuccess;
    }
    if (temp_storage_bytes < needed)
      return d::refuse("temp_storage_bytes is " + std::to_string(temp_storage_bytes) + ", the sort needs " +
                       std::to_string(needed) + " (ask with d_temp_storage == nullptr first)");
    if (n == 0) return cudaSuccess;
    const size_t kb = n * sizeof(KeyT), vb = n * sizeof(ValueT);
    const void* ranges[4] = {d_keys_in, d_keys_out, d_values_in, d_values_out};
    const size_t sizes[4] = {kb, kb, vb, vb};
    for (int i = 0; i < 4; ++i)
      for (int j = i + 1; j < 4; ++j)
        if (d::overlaps(ranges[i], sizes[i], ranges[j], sizes[j]))
          return d::refuse(
              "the key and value input and output ranges overlap (in-place sorting is not supported)");

    const int bits = end_bit - begin_bit;
    auto work = [=] {
      using barbell::emu::device_read;
      using barbell::emu::device_write;
      if (bits == 0) {  // nothing to compare: a copy, as CUB does then
        device_read(d_keys_in, kb);
        device_read(d_values_in, vb);
        device_write(d_keys_out, kb);
        device_write(d_values_out, vb);
        std::memcpy(d_keys_out, d_keys_in, kb);
        std::memcpy(d_values_out, d_values_in, vb);
        return;
      }
      char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(d_temp_storage) + d::kAlign - 1) /
                                           d::kAlign * d::kAlign);
      KeyT* keys_alt = reinterpret_cast<KeyT*>(base);
      ValueT* values_alt = reinterpret_cast<ValueT*>(base + keys_bytes);
      const int passes = (bits + 7) / 8;
      // The last pass must land in the output: with an odd number of passes the first one writes
      // the output, with an even number the alternate arrays.
      bool to_out = passes % 2 == 1;
      const KeyT* ksrc = d_keys_in;
      const ValueT* vsrc = d_values_in;
      for (int pass = 0; pass < passes; ++pass) {
        const int shift = begin_bit + 8 * pass;
        const int width = std::min(8, end_bit - shift);
        const auto mask = static_cast<uint64_t>((1u << width) - 1u);
        KeyT* kdst = to_out ? d_keys_out : keys_alt;
        ValueT* vdst = to_out ? d_values_out : values_alt;
        device_read(ksrc, kb);
        device_read(vsrc, vb);
        device_write(kdst, kb);
        device_write(vdst, vb);
        std::array<size_t, 257> start{};
        for (size_t i = 0; i < n; ++i)
          ++start[((static_cast<uint64_t>(d::radix_bits(ksrc[i])) >> shift) & mask) + 1];
        for (size_t r = 1; r < start.size(); ++r) start[r] += start[r - 1];
        // Counting sort, in input order within a digit: stable, hence stable overall.
        for (size_t i = 0; i < n; ++i) {
          const size_t digit = (static_cast<uint64_t>(d::radix_bits(ksrc[i])) >> shift) & mask;
          const size_t at = start[digit]++;
          kdst[at] = ksrc[i];
          vdst[at] = vsrc[i];
        }
        ksrc = kdst;
        vsrc = vdst;
        to_out = !to_out;
      }
    };
    return barbell::emu::enqueue(stream, "cub::DeviceRadixSort::SortPairs", work);
  }
};

}  // namespace cub
