// CRC-32C (Castagnoli), the checksum safetensors files written by barbell carry for each
// tensor's bytes: the SSE4.2 instruction where the CPU has it, a table otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

namespace barbell::io {

// The CRC-32C of n bytes, continuing from `crc` (the CRC of the bytes before them; 0 to
// start): crc32c(b, n2, crc32c(a, n1)) is the CRC of a followed by b. crc32c("123456789")
// is 0xE3069283.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

namespace detail {
uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc = 0);  // the table path alone (tests)
}  // namespace detail

}  // namespace barbell::io
