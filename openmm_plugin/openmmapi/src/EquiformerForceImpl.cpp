#include "internal/EquiformerForceImpl.h"

#include "EquiformerKernels.h"
#include "openmm/OpenMMException.h"
#include "openmm/internal/ContextImpl.h"

#include <set>

namespace EquiformerOpenMM {

void EquiformerForceImpl::initialize(OpenMM::ContextImpl &context)
{
  // Checks that need only the System; the kernel then checks everything that needs the model.
  const OpenMM::System &system = context.getSystem();
  const int numParticles = system.getNumParticles();
  const std::vector<int> &particles = owner.getParticles();
  const size_t numML = particles.empty() ? static_cast<size_t>(numParticles) : particles.size();
  if (owner.getModelFile().empty())
    throw OpenMM::OpenMMException("EquiformerForce: no model file given (the path of an exported model, "
                                  "see equiformer-export)");
  std::set<int> seen;
  for (int p : particles) {
    if (p < 0 || p >= numParticles)
      throw OpenMM::OpenMMException("EquiformerForce: particle index " + std::to_string(p) +
                                    " is outside the System (0.." + std::to_string(numParticles - 1) + ")");
    if (!seen.insert(p).second)
      throw OpenMM::OpenMMException("EquiformerForce: particle " + std::to_string(p) + " is listed twice");
  }
  if (owner.getAtomicNumbers().size() != numML)
    throw OpenMM::OpenMMException(
        "EquiformerForce: " + std::to_string(owner.getAtomicNumbers().size()) + " atomic numbers given for " +
        std::to_string(numML) + (particles.empty() ? " particles of the System" : " selected particles") +
        "; give one atomic number per particle the model is applied to");
  if (numML == 0) throw OpenMM::OpenMMException("EquiformerForce: no particles to apply the model to");
  kernel = context.getPlatform().createKernel(CalcEquiformerForceKernel::Name(), context);
  kernel.getAs<CalcEquiformerForceKernel>().initialize(system, owner);
}

double EquiformerForceImpl::calcForcesAndEnergy(OpenMM::ContextImpl &context, bool includeForces,
                                                bool includeEnergy, int groups)
{
  if ((groups & (1 << owner.getForceGroup())) == 0) return 0.0;
  return kernel.getAs<CalcEquiformerForceKernel>().execute(context, includeForces, includeEnergy);
}

std::vector<std::string> EquiformerForceImpl::getKernelNames() { return {CalcEquiformerForceKernel::Name()}; }

}  // namespace EquiformerOpenMM
