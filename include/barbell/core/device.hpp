// Where a tensor lives: the CPU or one CUDA device.
#pragma once

#include <cstdint>
#include <string>

#include <fmt/format.h>

namespace barbell {

enum class DeviceType : uint8_t { CPU, CUDA };

class Device {
 public:
  Device() = default;
  Device(DeviceType type, int index) : type_(type), index_(index) {}
  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::CUDA, index}; }
  // "cpu", "cuda", "cuda:1"; throws ValueError on anything else.
  static Device parse(const std::string& s);

  DeviceType type() const { return type_; }
  int index() const { return index_; }
  bool is_cpu() const { return type_ == DeviceType::CPU; }
  bool is_cuda() const { return type_ == DeviceType::CUDA; }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index_); }
  bool operator==(const Device& o) const { return type_ == o.type_ && index_ == o.index_; }
  bool operator!=(const Device& o) const { return !(*this == o); }

 private:
  DeviceType type_ = DeviceType::CPU;
  int index_ = 0;
};

namespace cuda {
// True when this build has the CUDA backend and a driver with at least one GPU.
bool is_available();
// Number of visible GPUs; 0 without a driver or without the CUDA backend.
int device_count();
}  // namespace cuda

}  // namespace barbell

template <>
struct fmt::formatter<barbell::Device> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(const barbell::Device& d, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(d.str(), ctx);
  }
};
