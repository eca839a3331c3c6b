// CUDA platform kernel of EquiformerForce. Per step, on the GPU of the CudaContext:
//   posq (+ posqCorrection in mixed precision) and the atom index -> ML positions (gather)
//   -> neighbour list (ATen cell list) -> network (libtorch) -> forces added to OpenMM's
//   fixed-point force buffer (scatter); only the energy (and the shortest edge) come back.
// All of it is the runtime's device-generic tensor API (cpp/src/device_api.h), which the CPU
// tests exercise with the same code.
//
// CUDA contexts. libtorch uses the CUDA runtime API, which always works in the device's
// *primary* context. OpenMM 8.6's CudaContext makes its own context with cuCtxCreate (the
// pip libOpenMMCUDA.so imports cuCtxCreate_v2 and no cuDevicePrimaryCtx* function), so its
// arrays and its stream belong to another context than torch's on the same device. Two cases:
//   - separate contexts (OpenMM 8.6): torch's work runs in the primary context (pushed around
//     every torch call, so that the runtime never picks up OpenMM's context and mixes
//     allocations), on torch's current stream. OpenMM's arrays are never touched by torch
//     kernels: they are copied into torch tensors with cuMemcpyPeer (the driver's copy between
//     two contexts, with explicit source and destination contexts), and the updated force
//     buffer is copied back the same way. cuMemcpyPeer is serialized with all pending and
//     future work in both contexts, so the copies see OpenMM's finished posq / forces and
//     torch's finished scatter without other synchronization. A stream of OpenMM's context
//     cannot be used from another context, so the network does not run on OpenMM's stream.
//   - one context (an OpenMM that uses the primary context): OpenMM's device pointers are
//     ordinary allocations of torch's context; they are wrapped with torch::from_blob (no
//     copy) and torch runs on OpenMM's current stream (getStreamFromExternal), so stream
//     order alone orders OpenMM's kernels, ours and OpenMM's next ones.
// Either way the positions and forces stay on the GPU.
#include "CudaEquiformerKernels.h"

#include "device_api.h"
#include "openmm/OpenMMException.h"
#include "openmm/cuda/CudaContext.h"
#include "openmm/internal/ContextImpl.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda.h>

#include <optional>

namespace EquiformerOpenMM {

using OpenMM::OpenMMException;

namespace {

void checkCuda(CUresult result, const char *what)
{
  if (result == CUDA_SUCCESS) return;
  const char *text = nullptr;
  cuGetErrorString(result, &text);
  throw OpenMMException(equiformerFailure(std::string(what) + " failed: " + (text ? text : "unknown CUDA error") +
                                          " (" + std::to_string(static_cast<int>(result)) + ")"));
}

// Makes CONTEXT current for the scope (and restores the previous one).
class PushContext {
 public:
  explicit PushContext(CUcontext context)
  {
    checkCuda(cuCtxPushCurrent(context), "making the CUDA primary context current (cuCtxPushCurrent)");
  }
  ~PushContext()
  {
    CUcontext popped;
    cuCtxPopCurrent(&popped);
  }
  PushContext(const PushContext &) = delete;
  PushContext &operator=(const PushContext &) = delete;
};

}  // namespace

struct CudaCalcEquiformerForceKernel::State {
  CUcontext primary = nullptr;  // the device's primary context (torch's), retained while we live
  CUdevice device = 0;
  bool retained = false;
  bool shared = false;          // OpenMM's CudaContext is the primary context
  int deviceIndex = 0;
  torch::Tensor particles;      // int64 [K] System index of every ML atom, on the device
  torch::Tensor species;        // int64 [K]
  // separate contexts: torch-side copies of OpenMM's arrays
  torch::Tensor posq, correction, atomIndex, force;
};

std::string CudaCalcEquiformerForceKernel::networkDevice(const std::string &requested, int contextDevice)
{
  const std::string mine = "cuda:" + std::to_string(contextDevice);
  std::string d;
  for (char c : requested)
    if (c != ' ' && c != '\t') d += c;
  if (d.empty() || d == "cpu" || d == "auto" || d == "cuda" || d == mine) return mine;
  if (d.rfind("cuda:", 0) == 0)
    throw OpenMMException(equiformerFailure(
        "device '" + requested + "' was requested, but this Context runs on CUDA device " +
        std::to_string(contextDevice) + " (the CUDA platform's DeviceIndex property); on the CUDA platform the "
        "network runs on the Context's GPU: use device 'cuda' (or '" + mine + "'), or choose DeviceIndex " +
        d.substr(5) + " for the Context"));
  return requested;  // the runtime refuses what it does not know, with its message
}

CudaCalcEquiformerForceKernel::CudaCalcEquiformerForceKernel(const std::string &name, const OpenMM::Platform &platform,
                                                             OpenMM::CudaContext &cu)
    : CalcEquiformerForceKernel(name, platform), cu(cu), state(new State)
{
}

CudaCalcEquiformerForceKernel::~CudaCalcEquiformerForceKernel()
{
  if (state && state->retained) {
    try {
      PushContext push(state->primary);
      setup.model.reset();  // its tensors belong to the primary context
      state->particles = state->species = torch::Tensor();
      state->posq = state->correction = state->atomIndex = state->force = torch::Tensor();
    } catch (...) {  // never throw from a destructor
    }
    cuDevicePrimaryCtxRelease(state->device);
  }
}

void CudaCalcEquiformerForceKernel::initialize(const OpenMM::System &system, const EquiformerForce &force)
{
  State &s = *state;
  s.deviceIndex = cu.getDeviceIndex();
  s.device = cu.getDevice();
  const std::string device = networkDevice(force.getDevice(), s.deviceIndex);
  checkCuda(cuDevicePrimaryCtxRetain(&s.primary, s.device), "retaining the CUDA primary context");
  s.retained = true;
  s.shared = s.primary == cu.getContext();

  PushContext push(s.primary);
  setup.initialize(system, force, device);
  try {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(s.deviceIndex));
    const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    const torch::Device dev = equiformer::device::model_device(*setup.model);
    s.particles = torch::tensor(std::vector<int64_t>(setup.particles.begin(), setup.particles.end()), i64).to(dev);
    s.species = torch::tensor(setup.species, i64).to(dev);
    if (!s.shared) {
      const int64_t padded = cu.getPaddedNumAtoms();
      const auto on = torch::TensorOptions().device(dev);
      s.posq = torch::empty({padded, 4}, on.dtype(cu.getUseDoublePrecision() ? torch::kFloat64 : torch::kFloat32));
      if (cu.getUseMixedPrecision()) s.correction = torch::empty({padded, 4}, on.dtype(torch::kFloat32));
      s.atomIndex = torch::empty({padded}, on.dtype(torch::kInt32));
      s.force = torch::empty({3 * padded}, on.dtype(torch::kInt64));
    }
  } catch (const OpenMMException &) {
    throw;
  } catch (const std::exception &e) {
    throw OpenMMException(equiformerFailure(e.what()));
  }
}

double CudaCalcEquiformerForceKernel::execute(OpenMM::ContextImpl &context, bool includeForces, bool)
{
  State &s = *state;
  double box[9];
  if (setup.periodic) {
    OpenMM::Vec3 a, b, c;
    context.getPeriodicBoxVectors(a, b, c);  // the host copy OpenMM keeps
    setup.boxInModelUnits(a, b, c, box);
  }
  const int64_t numAtoms = cu.getNumAtoms(), padded = cu.getPaddedNumAtoms();
  const bool mixed = cu.getUseMixedPrecision();
  const torch::ScalarType real = cu.getUseDoublePrecision() ? torch::kFloat64 : torch::kFloat32;

  PushContext push(s.primary);
  equiformer::device::Evaluation result;
  try {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(s.deviceIndex));
    const auto on = torch::TensorOptions().device(torch::kCUDA, s.deviceIndex);
    auto pointer = [](OpenMM::CudaArray &array) { return reinterpret_cast<void *>(array.getDevicePointer()); };
    // copy N bytes of OpenMM's ARRAY into torch's TENSOR (separate contexts), or back
    auto fromOpenMM = [&](torch::Tensor &tensor, OpenMM::CudaArray &array) {
      checkCuda(cuMemcpyPeer(reinterpret_cast<CUdeviceptr>(tensor.data_ptr()), s.primary, array.getDevicePointer(),
                             cu.getContext(), tensor.nbytes()),
                "copying an array of the OpenMM context (cuMemcpyPeer)");
    };
    std::optional<c10::cuda::CUDAStreamGuard> onOpenMMStream;
    torch::Tensor posq, correction, atomIndex, force;
    if (s.shared) {
      onOpenMMStream.emplace(c10::cuda::getStreamFromExternal(cu.getCurrentStream(),
                                                              static_cast<c10::DeviceIndex>(s.deviceIndex)));
      posq = torch::from_blob(pointer(cu.getPosq()), {padded, 4}, on.dtype(real));
      if (mixed) correction = torch::from_blob(pointer(cu.getPosqCorrection()), {padded, 4}, on.dtype(torch::kFloat32));
      atomIndex = torch::from_blob(pointer(cu.getAtomIndexArray()), {padded}, on.dtype(torch::kInt32));
      force = torch::from_blob(pointer(cu.getLongForceBuffer()), {3 * padded}, on.dtype(torch::kInt64));
    } else {
      fromOpenMM(s.posq, cu.getPosq());
      if (mixed) fromOpenMM(s.correction, cu.getPosqCorrection());
      fromOpenMM(s.atomIndex, cu.getAtomIndexArray());  // OpenMM reorders atoms now and then
      posq = s.posq;
      correction = mixed ? s.correction : torch::Tensor();
      atomIndex = s.atomIndex;
      force = s.force;
    }
    const torch::Tensor slots = atomIndex.slice(0, 0, numAtoms);
    torch::Tensor x = equiformer::device::gather_positions(posq, correction, slots, s.particles, setup.nmToModel);
    torch::Tensor t_box;
    if (setup.periodic) t_box = torch::from_blob(box, {3, 3}, torch::TensorOptions().dtype(torch::kFloat64));
    equiformer::device::Edges edges = equiformer::device::neighbors(x, t_box, setup.cutoff);
    result = equiformer::device::evaluate(*setup.model, s.species, edges, s.particles.size(0));
    if (includeForces) {
      if (!s.shared) fromOpenMM(s.force, cu.getLongForceBuffer());
      equiformer::device::scatter_forces(force, slots, s.particles, result.forces, setup.forceToKJPerNm());
      if (!s.shared)
        checkCuda(cuMemcpyPeer(cu.getLongForceBuffer().getDevicePointer(), cu.getContext(),
                               reinterpret_cast<CUdeviceptr>(s.force.data_ptr()), s.primary, s.force.nbytes()),
                  "adding the forces to the OpenMM context (cuMemcpyPeer)");
    }
  } catch (const OpenMMException &) {
    throw;
  } catch (const std::exception &e) {
    throw OpenMMException(equiformerFailure(e.what()));
  }
  setup.warnIfClose(result.min_distance);
  return (result.energy + setup.energyOffset) * setup.energyToKJ;
}

}  // namespace EquiformerOpenMM
