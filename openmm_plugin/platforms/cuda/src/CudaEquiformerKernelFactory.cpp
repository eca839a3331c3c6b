// Entry points of libEquiformerOpenMMCUDA.so: OpenMM calls registerKernelFactories() after
// loading the library (Platform::loadPluginLibrary / loadPluginsFromDirectory). The library
// links libOpenMMCUDA.so, which needs the CUDA driver (libcuda.so.1): on a machine without it
// the library does not load at all (dlopen fails, OpenMM reports it as a plugin load failure;
// equiformer.openmm.native remembers the message), and nothing here runs.
#include "CudaEquiformerKernels.h"

#include "openmm/KernelFactory.h"
#include "openmm/OpenMMException.h"
#include "openmm/Platform.h"
#include "openmm/cuda/CudaContext.h"
#include "openmm/internal/ContextImpl.h"

namespace EquiformerOpenMM {

namespace {

class CudaEquiformerKernelFactory : public OpenMM::KernelFactory {
 public:
  OpenMM::KernelImpl *createKernelImpl(std::string name, const OpenMM::Platform &platform,
                                       OpenMM::ContextImpl &context) const override
  {
    if (name != CalcEquiformerForceKernel::Name())
      throw OpenMM::OpenMMException("EquiformerForce CUDA plugin: unknown kernel '" + name + "'");
    // one device per Context: the kernel works on the first (only) CudaContext
    auto &data = *static_cast<OpenMM::CudaPlatform::PlatformData *>(context.getPlatformData());
    return new CudaCalcEquiformerForceKernel(name, platform, *data.contexts[0]);
  }
};

}  // namespace

}  // namespace EquiformerOpenMM

extern "C" EQUIFORMER_OPENMM_EXPORT void registerPlatforms() {}

extern "C" EQUIFORMER_OPENMM_EXPORT void registerKernelFactories()
{
  EquiformerOpenMM::registerFactoryOnPlatforms([](const std::string &name) -> OpenMM::KernelFactory * {
    return name == "CUDA" ? new EquiformerOpenMM::CudaEquiformerKernelFactory() : nullptr;
  });
}
