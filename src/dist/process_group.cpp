// ProcessGroup's backend-independent half: argument checks shared by every backend (so a
// bad call throws the same error on MPI and NCCL, before anything is sent), the chunking
// rule of reduce_scatter / all_gather, and the one-rank group.
#include "barbell/dist/process_group.hpp"

#include <cstdlib>

#include "barbell/autograd/autograd.hpp"
#include "dist/backends.hpp"

namespace barbell::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Avg: return "avg";
    case ReduceOp::Max: return "max";
  }
  return "?";
}

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::Local: return "local";
    case Backend::MPI: return "mpi";
    case Backend::NCCL: return "nccl";
  }
  return "?";
}

double default_timeout_s() {
  if (const char* e = std::getenv("BARBELL_DIST_TIMEOUT")) {
    char* end = nullptr;
    double v = std::strtod(e, &end);
    BB_CHECK(end != e && *end == '\0' && v > 0, ValueError,
             "BARBELL_DIST_TIMEOUT: expected a positive number of seconds, got '{}'", e);
    return v;
  }
  return 300.0;
}

ProcessGroup::ProcessGroup(int rank, int size) : rank_(rank), size_(size), timeout_s_(default_timeout_s()) {
  BB_CHECK(size >= 1 && rank >= 0 && rank < size, ValueError,
           "ProcessGroup: rank {} outside a group of size {}", rank, size);
}

void ProcessGroup::set_timeout(double seconds) {
  BB_CHECK(seconds > 0, ValueError,
           "ProcessGroup::set_timeout: expected a positive number of seconds, got {}", seconds);
  timeout_s_ = seconds;
}

std::pair<int64_t, int64_t> ProcessGroup::chunk_range(int64_t n, int world, int r) {
  const int64_t c = chunk_numel(n, world);
  const int64_t b = std::min<int64_t>(n, c * r), e = std::min<int64_t>(n, c * (r + 1));
  return {b, e};
}

void ProcessGroup::check_tensor(const char* op, const char* what, const Tensor& t) const {
  BB_CHECK(t.defined(), ValueError, "{}: the {} tensor is undefined", op, what);
  BB_CHECK(
      !broken(), Error,
      "{}: this {} process group (rank {} of {}) is broken by an earlier failed or timed-out collective; "
      "end the job (dist::abort_job)",
      op, backend_name(backend()), rank_, size_);
  BB_CHECK(t.device() == device() || (backend() == Backend::Local), DeviceError,
           "{}: {} tensor {} {} is on {}, but this {} process group works on {} tensors", op, what,
           shape_str(t.shape()), dtype_name(t.dtype()), t.device().str(), backend_name(backend()),
           device().str());
  BB_CHECK(
      t.is_contiguous(), ShapeError,
      "{}: {} tensor {} must be contiguous (collectives work in place on its memory); pass t.contiguous() "
      "and copy back",
      op, what, shape_str(t.shape()));
}

namespace {

void check_reducible(const char* op, const Tensor& t, ReduceOp rop) {
  DType d = t.dtype();
  BB_CHECK(d != DType::Bool, DTypeError, "{}: cannot reduce a bool tensor {}", op, shape_str(t.shape()));
  BB_CHECK(rop != ReduceOp::Avg || is_floating(d), DTypeError,
           "{}: avg needs a floating tensor, got {} {} (use sum and divide)", op, dtype_name(d),
           shape_str(t.shape()));
}

}  // namespace

WorkPtr ProcessGroup::all_reduce(const Tensor& tensor, ReduceOp op) {
  check_tensor("all_reduce", "input", tensor);
  check_reducible("all_reduce", tensor, op);
  tensor.bump_version();  // written in place: a copy autograd saved must not be read after this
  return do_all_reduce(tensor.detach(), op);
}

WorkPtr ProcessGroup::broadcast(const Tensor& tensor, int root) {
  check_tensor("broadcast", "input", tensor);
  BB_CHECK(root >= 0 && root < size_, ValueError, "broadcast: root {} outside a group of size {}", root,
           size_);
  tensor.bump_version();
  return do_broadcast(tensor.detach(), root);
}

WorkPtr ProcessGroup::reduce_scatter(const Tensor& output, const Tensor& input, ReduceOp op) {
  check_tensor("reduce_scatter", "output", output);
  check_tensor("reduce_scatter", "input", input);
  check_reducible("reduce_scatter", input, op);
  BB_CHECK(output.dtype() == input.dtype(), DTypeError, "reduce_scatter: output is {} but input is {}",
           dtype_name(output.dtype()), dtype_name(input.dtype()));
  const int64_t c = chunk_numel(input.numel(), size_);
  BB_CHECK(
      output.numel() == c, ShapeError,
      "reduce_scatter: input {} has {} elements, so each of the {} ranks gets ceil({} / {}) = {}, but output "
      "is {} ({} elements)",
      shape_str(input.shape()), input.numel(), size_, input.numel(), size_, c, shape_str(output.shape()),
      output.numel());
  BB_CHECK(!output.same(input) && output.data_ptr() != input.data_ptr(), ValueError,
           "reduce_scatter: output and input must not share memory");
  output.bump_version();
  return do_reduce_scatter(output.detach(), input.detach(), op);
}

WorkPtr ProcessGroup::all_gather(const Tensor& output, const Tensor& input) {
  check_tensor("all_gather", "output", output);
  check_tensor("all_gather", "input", input);
  BB_CHECK(output.dtype() == input.dtype(), DTypeError, "all_gather: output is {} but input is {}",
           dtype_name(output.dtype()), dtype_name(input.dtype()));
  const int64_t c = chunk_numel(output.numel(), size_);
  BB_CHECK(
      input.numel() == c, ShapeError,
      "all_gather: output {} has {} elements, so each of the {} ranks sends ceil({} / {}) = {}, but input is "
      "{} ({} elements)",
      shape_str(output.shape()), output.numel(), size_, output.numel(), size_, c, shape_str(input.shape()),
      input.numel());
  BB_CHECK(output.numel() == 0 || output.data_ptr() != input.data_ptr(), ValueError,
           "all_gather: output and input must not share memory");
  output.bump_version();
  return do_all_gather(output.detach(), input.detach());
}

void ProcessGroup::barrier() {
  BB_CHECK(!broken(), Error, "barrier: this {} process group (rank {} of {}) is broken by an earlier failure",
           backend_name(backend()), rank_, size_);
  do_barrier();
}

// ---- the one-rank group ----------------------------------------------------------------

namespace {

class DoneWork : public Work {
 public:
  void wait() override {}
  bool is_completed() override { return true; }
};

class LocalGroup : public ProcessGroup {
 public:
  explicit LocalGroup(Device d) : ProcessGroup(0, 1), device_(d) {}
  Backend backend() const override { return Backend::Local; }
  Device device() const override { return device_; }
  bool broken() const override { return false; }
  std::shared_ptr<ProcessGroup> split(int) override { return std::make_shared<LocalGroup>(device_); }

 protected:
  WorkPtr do_all_reduce(const Tensor&, ReduceOp) override { return std::make_shared<DoneWork>(); }
  WorkPtr do_broadcast(const Tensor&, int) override { return std::make_shared<DoneWork>(); }
  WorkPtr do_reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp) override {
    NoGradGuard g;
    if (in.numel() > 0) Tensor(out).view({out.numel()}).copy_(in.view({in.numel()}));
    return std::make_shared<DoneWork>();
  }
  WorkPtr do_all_gather(const Tensor& out, const Tensor& in) override {
    NoGradGuard g;
    if (out.numel() > 0) Tensor(out).view({out.numel()}).copy_(in.view({in.numel()}));
    return std::make_shared<DoneWork>();
  }
  void do_barrier() override {}

 private:
  Device device_;
};

}  // namespace

namespace detail {

ProcessGroupPtr make_local_group(Device device) { return std::make_shared<LocalGroup>(device); }

std::string timeout_message(const std::string& what, double timeout_s, int rank, int size) {
  return fmt::format(
      "{} timed out after {:g} s on rank {} of {}: another rank may have failed, hung, or called different "
      "collectives (the process group is now broken; BARBELL_DIST_TIMEOUT sets the timeout)",
      what, timeout_s, rank, size);
}

}  // namespace detail
}  // namespace barbell::dist
