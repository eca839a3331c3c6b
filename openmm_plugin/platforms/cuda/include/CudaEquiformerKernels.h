// CUDA platform implementation of CalcEquiformerForceKernel (libEquiformerOpenMMCUDA.so): the
// positions are read from the CudaContext's arrays on the GPU, the neighbour list is built and the
// network runs there (libtorch on the context's device), and the forces are added to the
// context's fixed-point force buffer on the GPU; only the energy comes back to the host.
// libtorch types stay out of this header (State is defined in the .cpp).
#pragma once

#include "EquiformerKernelSetup.h"
#include "EquiformerKernels.h"

#include <memory>
#include <string>

namespace OpenMM {
class CudaContext;
}

namespace EquiformerOpenMM {

class CudaCalcEquiformerForceKernel : public CalcEquiformerForceKernel {
 public:
  CudaCalcEquiformerForceKernel(const std::string &name, const OpenMM::Platform &platform, OpenMM::CudaContext &cu);
  ~CudaCalcEquiformerForceKernel() override;
  void initialize(const OpenMM::System &system, const EquiformerForce &force) override;
  double execute(OpenMM::ContextImpl &context, bool includeForces, bool includeEnergy) override;

  // The libtorch device string the network runs on for a force whose device setting is
  // REQUESTED, on a CUDA context of device CONTEXT_DEVICE: always that GPU ("cuda:K");
  // "", "cpu", "auto" and "cuda" mean it, "cuda:K" must name it (else OpenMMException).
  static std::string networkDevice(const std::string &requested, int contextDevice);

 private:
  struct State;
  OpenMM::CudaContext &cu;
  EquiformerKernelSetup setup;
  std::unique_ptr<State> state;
};

}  // namespace EquiformerOpenMM
