// Internal: the TorchScript executor the runtime's calls run on (not installed).
#pragma once

#include <torch/csrc/jit/runtime/graph_executor.h>

namespace equiformer {
namespace detail {

// TorchScript's legacy graph executor (optimisation on, no profiling) while the scope lasts,
// then the process's previous setting back. The profiling executor re-optimises during the
// first calls and then runs these models 15-25% slower than eager PyTorch (measured, torch
// 2.9, CPU); the legacy one matches eager. A method's executor is chosen at its first call,
// so our modules, always called inside a scope, keep the legacy one, and other TorchScript
// code in the process (openmm-torch's TorchForce, whose energy-only module fails under the
// legacy executor) keeps the default. The setting is process-wide while it lasts: the
// engines call one model at a time per process.
class LegacyExecutorScope {
public:
  LegacyExecutorScope()
      : executor_(torch::jit::getExecutorMode().exchange(false)),
        profiling_(torch::jit::getProfilingMode().exchange(false))
  {
  }
  ~LegacyExecutorScope()
  {
    torch::jit::getProfilingMode() = profiling_;
    torch::jit::getExecutorMode() = executor_;
  }
  LegacyExecutorScope(const LegacyExecutorScope &) = delete;
  LegacyExecutorScope &operator=(const LegacyExecutorScope &) = delete;

private:
  bool executor_;
  bool profiling_;
};

} // namespace detail
} // namespace equiformer
