// Reference (and CPU) platform implementation of CalcEquiformerForceKernel: positions and
// forces live in the ReferencePlatform's double-precision arrays (the CPU platform keeps
// them there too), the neighbor list is built on the host, the network runs on the
// equiformer runtime (libtorch, "cpu" or a CUDA device).
#pragma once

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
  void checkBox(const double *boxModelUnits) const;

  std::unique_ptr<equiformer::Model> model;
  std::vector<int> particles;     // System index of every ML atom
  std::vector<int64_t> species;   // model species index of every ML atom
  bool periodic = false;
  double nmToModel = 1.0;         // model length units per nm
  double energyToKJ = 1.0;        // kJ/mol per model energy unit
  double cutoff = 0.0;            // model length unit
  double energyOffset = 0.0;      // model energy unit, once per system
  bool warnedClose = false;       // the close-atoms warning was given (once per Context)
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
