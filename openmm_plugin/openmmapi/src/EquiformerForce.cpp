#include "EquiformerForce.h"

#include "internal/EquiformerForceImpl.h"
#include "openmm/OpenMMException.h"

namespace EquiformerOpenMM {

EquiformerForce::EquiformerForce(const std::string &modelFile, const std::vector<int> &atomicNumbers,
                                 const std::vector<int> &particles)
    : modelFile(modelFile), atomicNumbers(atomicNumbers), particles(particles)
{
}

void EquiformerForce::setPrecision(const std::string &value)
{
  if (value != "" && value != "single" && value != "double")
    throw OpenMM::OpenMMException("EquiformerForce: unknown precision '" + value +
                                  "'; use \"\" (the model's own dtype), \"single\" or \"double\"");
  precision = value;
}

void EquiformerForce::setNumThreads(int value)
{
  if (value < 0) throw OpenMM::OpenMMException("EquiformerForce: the number of threads must be >= 0 (0 = default)");
  numThreads = value;
}

OpenMM::ForceImpl *EquiformerForce::createImpl() const { return new EquiformerForceImpl(*this); }

}  // namespace EquiformerOpenMM
