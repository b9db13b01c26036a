// Launchers of barbell's flash-attention kernels (kernels/flash/*.cuh): argument
// checks, the dtype / head-dim / causal dispatch, workspaces, and the shared-memory
// opt-in. The kernels are header templates so that the CPU tests can run
// the same code under the warp emulator (tests/sim).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <tuple>

#include "barbell/cuda/cuda.hpp"
#include "common.cuh"
#include "cuda/kernels.hpp"
#include "flash/schedule.hpp"
#include "flash/tensor_params.hpp"

namespace barbell::gpu {
namespace {

const char* kOp = "scaled_dot_product_attention (flash)";

// What the kernels need to know of a device, found once per device: its compute
// capability (major * 10 + minor), the opt-in shared memory per block, and whether this
// build has machine code for it (the default build is sm_90a only, and its code does
// not run on other GPUs).
struct DeviceInfo {
  int cc = 0;
  size_t smem_optin = 0;
  bool has_image = false;
};
DeviceInfo device_info(int device) {
  static std::mutex mu;
  static std::array<DeviceInfo, 64> cache{};
  if (device < 0 || device >= 64) return {};
  std::lock_guard<std::mutex> lock(mu);
  DeviceInfo& info = cache[static_cast<size_t>(device)];
  if (info.cc == 0) {
    auto props = cuda::properties(device);
    int prev = -1;
    BB_CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != device) BB_CUDA_CHECK(cudaSetDevice(device));
    cudaFuncAttributes attr{};
    const bool image = cudaFuncGetAttributes(&attr, fa::fwd_kernel<bf16, 64, false>) == cudaSuccess;
    (void)cudaGetLastError();  // a missing image is an answer here, not an error
    if (prev != device) BB_CUDA_CHECK(cudaSetDevice(prev));
    info = {props.major * 10 + props.minor, props.shared_memory_per_block_optin, image};
  }
  return info;
}

// The most dynamic shared memory any of the kernels for head dim D asks for (the
// backward dK/dV kernel: 145 KiB at D = 128, more than sm_86/sm_89 offer).
template <int D>
size_t max_smem() {
  fa::FwdParams f;
  fa::BwdParams b;
  size_t m = std::max(fa::fwd_shape<bf16, D, 0>(f).smem, fa::fwd_shape<bf16, D, 1>(f).smem);
  m = std::max(m, fa::bwd_dkdv_shape<bf16, D>(b).smem);
  return std::max(m, fa::bwd_dq_shape<bf16, D>(b).smem);
}

// Raises a kernel's dynamic shared memory limit on the current device, once per
// (kernel, device, size).
void allow_smem(const void* kernel, size_t bytes) {
  static std::mutex mu;
  static std::set<std::tuple<const void*, int, size_t>> done;
  int device = -1;
  BB_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({kernel, device, bytes})) return;
  BB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  done.insert({kernel, device, bytes});
}

template <typename Kernel, typename Params>
void launch(Kernel kernel, const fa::LaunchShape& s, const Params& p, cudaStream_t stream) {
  if (s.grid_x == 0 || s.grid_y == 0 || s.grid_z == 0) return;
  // Opted in at every size, not only above 48 KiB: three launches ask for exactly 48 KiB,
  // which fits the default limit (48 KiB less the kernel's static shared memory) only while
  // the kernels have no static shared memory; the call is made once per (kernel, device, size).
  if (s.smem > 0) allow_smem(reinterpret_cast<const void*>(kernel), s.smem);
  BB_LAUNCH_FN(dim3(s.grid_x, s.grid_y, s.grid_z), s.threads, s.smem, stream, kernel)(p);
  BB_CUDA_LAUNCH_CHECK();
}

// The forward's tile configuration: $BARBELL_FLASH_FWD_TILES (0, the default, or 1; see
// FwdCfg in flash/forward.cuh), read at every call so a benchmark can switch it.
int forward_variant() {
  const char* e = std::getenv("BARBELL_FLASH_FWD_TILES");
  return e && e[0] == '1' ? 1 : 0;
}

}  // namespace

bool flash_attention_supported(const Tensor& q, const Tensor& k, const Tensor& v, std::string* why) {
  auto fail = [&](const std::string& m) {
    if (why) *why = m;
    return false;
  };
  if (!q.is_cuda()) return fail(fmt::format("q is on {}, the kernels run on CUDA devices", q.device().str()));
  if (!fa::inputs_ok(q, k, v, why)) return false;
  const int64_t D = q.size(3);
  const DeviceInfo info = device_info(q.device().index());
  if (!info.has_image)
    return fail(fmt::format("this build has no machine code for {} (compute capability {}.{}; built for "
                            "CMAKE_CUDA_ARCHITECTURES, sm_90a by default)",
                            q.device().str(), info.cc / 10, info.cc % 10));
  if (info.cc < 80)
    return fail(fmt::format("compute capability {}.{} (the kernels need 8.0 or later)", info.cc / 10, info.cc % 10));
  const size_t need = D == 64 ? max_smem<64>() : max_smem<128>();
  if (info.smem_optin < need)
    return fail(fmt::format("the kernels for head dim {} need {} bytes of shared memory per block, this GPU offers {}",
                            D, need, info.smem_optin));
  return true;
}

void flash_attention_forward(const Tensor& o, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                             bool causal, double scale) {
  // The op resolved the backend with flash_attention_supported (device checks
  // included); here only what the kernels index is checked again, without a device query.
  std::string why;
  BB_CHECK(fa::inputs_ok(q, k, v, &why), ValueError, "{}: {}", kOp, why);
  BB_CHECK(fa::layout_ok(o, "out", &why), ValueError, "{}: {}", kOp, why);
  BB_CHECK(lse.is_contiguous() && lse.dtype() == DType::F32, ValueError, "{}: lse must be contiguous f32, got {} {}",
           kOp, dtype_name(lse.dtype()), shape_str(lse.shape()));
  const fa::FwdParams p = fa::fwd_params(o, lse, q, k, v, causal, scale);
  BB_CHECK(p.scale > 0 && std::isfinite(p.scale), ValueError, "{}: the softmax scale must be positive, got {}", kOp,
           scale);
  if (p.B == 0 || p.H == 0 || p.Tq == 0) return;
  cudaStream_t stream = stream_for(q);
  fa::dispatch(q.dtype(), q.size(3), kOp, [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    fa::run_forward<T, D>(p, [&](auto kernel, const fa::LaunchShape& s) { launch(kernel, s, p, stream); },
                          forward_variant());
  });
}

void flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                              bool causal, double scale, bool deterministic) {
  std::string why;
  BB_CHECK(fa::inputs_ok(q, k, v, &why), ValueError, "{} backward: {}", kOp, why);
  for (auto [t, name] : {std::pair{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}, {&dout, "dout"}, {&o, "out"}})
    BB_CHECK(fa::layout_ok(*t, name, &why), ValueError, "{} backward: {}", kOp, why);
  BB_CHECK(lse.is_contiguous() && lse.dtype() == DType::F32, ValueError,
           "{} backward: lse must be contiguous f32, got {} {}", kOp, dtype_name(lse.dtype()), shape_str(lse.shape()));
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3);
  fa::BwdParams p = fa::bwd_params(dq, dk, dv, dout, q, k, v, o, lse, nullptr, nullptr, causal, scale);
  BB_CHECK(p.scale > 0 && std::isfinite(p.scale), ValueError, "{} backward: the softmax scale must be positive, got {}",
           kOp, scale);
  if (B == 0 || H == 0) return;
  if (Tq == 0) {  // no query: every key gets no gradient
    fill(dk, 0.0);
    fill(dv, 0.0);
    return;
  }
  // Workspaces: delta [B, H, Tq] and, in atomic mode, dq_accum [B, H, Tq, D] (fp32).
  const TensorOptions f32{DType::F32, q.device()};
  Tensor delta = empty({B, H, Tq}, f32);
  Tensor dq_accum = deterministic ? Tensor() : empty({B, H, Tq, D}, f32);
  p.delta = static_cast<float*>(delta.data_ptr());
  p.dq_accum = deterministic ? nullptr : static_cast<float*>(dq_accum.data_ptr());
  cudaStream_t stream = stream_for(q);
  fa::dispatch(q.dtype(), D, kOp, [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int Dh = decltype(dim)::value;
    fa::run_backward<T, Dh>(p, deterministic,
                            [&](auto kernel, const fa::LaunchShape& s) { launch(kernel, s, p, stream); });
  });
  // The workspaces go back to the stream-ordered pool here; their memory is reused
  // only by work queued after these kernels on this stream.
}

}  // namespace barbell::gpu
