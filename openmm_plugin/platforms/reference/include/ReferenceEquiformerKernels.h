// Reference (and CPU) platform implementation of CalcEquiformerForceKernel: positions and
// forces live in the ReferencePlatform's double-precision arrays (the CPU platform keeps
// them there too), the neighbor list is built on the host, the network runs on the
// equiformer runtime (libtorch, "cpu" or a CUDA device).
#pragma once

#include "EquiformerKernelSetup.h"
#include "EquiformerKernels.h"
#include "equiformer/neighbors.h"
#include "equiformer/runtime.h"

#include <memory>
#include <string>
#include <vector>

namespace EquiformerOpenMM {

class ReferenceCalcEquiformerForceKernel : public CalcEquiformerForceKernel {
 public:
  ReferenceCalcEquiformerForceKernel(const std::string &name, const OpenMM::Platform &platform)
      : CalcEquiformerForceKernel(name, platform) {}
  ~ReferenceCalcEquiformerForceKernel() override;
  void initialize(const OpenMM::System &system, const EquiformerForce &force) override;
  double execute(OpenMM::ContextImpl &context, bool includeForces, bool includeEnergy) override;

 private:
  EquiformerKernelSetup setup;    // model, species, units, box check (shared with the CUDA kernel)
  equiformer::CellList cells;
  equiformer::NeighborList edges;
  std::vector<double> positions;  // model length unit, 3 per ML atom
  equiformer::Result result;
};

// The CPU platform runs the same implementation (its positions and forces are the
// ReferencePlatform arrays); the network uses libtorch's own CPU threads.
class CpuCalcEquiformerForceKernel : public ReferenceCalcEquiformerForceKernel {
 public:
  using ReferenceCalcEquiformerForceKernel::ReferenceCalcEquiformerForceKernel;
};

}  // namespace EquiformerOpenMM
