// Plugin entry points: OpenMM calls registerKernelFactories() after loading the library
// (Platform::loadPluginLibrary / loadPluginsFromDirectory). The kernel is registered for the
// Reference and the CPU platforms, whichever are loaded at that point.
#include "ReferenceEquiformerKernels.h"

#include "openmm/KernelFactory.h"
#include "openmm/OpenMMException.h"
#include "openmm/Platform.h"

namespace EquiformerOpenMM {

namespace {

class ReferenceEquiformerKernelFactory : public OpenMM::KernelFactory {
 public:
  explicit ReferenceEquiformerKernelFactory(bool cpu) : cpu(cpu) {}
  OpenMM::KernelImpl *createKernelImpl(std::string name, const OpenMM::Platform &platform,
                                       OpenMM::ContextImpl &) const override
  {
    if (name != CalcEquiformerForceKernel::Name())
      throw OpenMM::OpenMMException("EquiformerForce plugin: unknown kernel '" + name + "'");
    if (cpu) return new CpuCalcEquiformerForceKernel(name, platform);
    return new ReferenceCalcEquiformerForceKernel(name, platform);
  }

 private:
  bool cpu;
};

}  // namespace

}  // namespace EquiformerOpenMM

extern "C" EQUIFORMER_OPENMM_EXPORT void registerPlatforms() {}

extern "C" EQUIFORMER_OPENMM_EXPORT void registerKernelFactories()
{
  EquiformerOpenMM::registerFactoryOnPlatforms([](const std::string &name) -> OpenMM::KernelFactory * {
    if (name != "Reference" && name != "CPU") return nullptr;
    return new EquiformerOpenMM::ReferenceEquiformerKernelFactory(name == "CPU");
  });
}
