// Device memory from CUDA's stream-ordered pool and host/device copies: the part of
// the CUDA backend the core needs to place tensors on a GPU.
#include "check.cuh"
#include "cuda/runtime.hpp"

namespace barbell::cuda_rt {

int device_count() {
  int n = 0;
  // No driver or no GPU is not an error here: it means zero devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

namespace {
void set_device(int device) {
  int n = device_count();
  BB_CHECK(device >= 0 && device < n, DeviceError, "cuda:{} requested but {} CUDA device(s) are visible", device, n);
  BB_CUDA_CHECK(cudaSetDevice(device));
}
}  // namespace

void* alloc(size_t nbytes, int device) {
  set_device(device);
  void* p = nullptr;
  if (nbytes == 0) return nullptr;
  BB_CUDA_CHECK(cudaMallocAsync(&p, nbytes, cudaStreamPerThread));
  return p;
}

void free(void* ptr, int device) noexcept {
  if (!ptr) return;
  if (cudaSetDevice(device) == cudaSuccess) cudaFreeAsync(ptr, cudaStreamPerThread);
}

void copy_h2d(void* dst, const void* src, size_t nbytes, int device) {
  set_device(device);
  BB_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, cudaStreamPerThread));
  BB_CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));
}

void copy_d2h(void* dst, const void* src, size_t nbytes, int device) {
  set_device(device);
  BB_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, cudaStreamPerThread));
  BB_CUDA_CHECK(cudaStreamSynchronize(cudaStreamPerThread));
}

void copy_d2d(void* dst, const void* src, size_t nbytes, int device) {
  set_device(device);
  BB_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, cudaStreamPerThread));
}

}  // namespace barbell::cuda_rt
