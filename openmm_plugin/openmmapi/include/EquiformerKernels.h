// The kernel interface of EquiformerForce; each platform supplies an implementation.
#pragma once

#include "EquiformerForce.h"
#include "openmm/KernelImpl.h"
#include "openmm/Platform.h"
#include "openmm/System.h"

#include <string>

namespace OpenMM {
class ContextImpl;
}

namespace EquiformerOpenMM {

class CalcEquiformerForceKernel : public OpenMM::KernelImpl {
 public:
  static std::string Name() { return "CalcEquiformerForce"; }
  CalcEquiformerForceKernel(const std::string &name, const OpenMM::Platform &platform)
      : OpenMM::KernelImpl(name, platform) {}
  // Load and validate everything (called while the Context is created); throws
  // OpenMM::OpenMMException with a message naming the problem.
  virtual void initialize(const OpenMM::System &system, const EquiformerForce &force) = 0;
  // Add the forces (kJ/mol/nm) to the platform's force array; return the energy (kJ/mol).
  virtual double execute(OpenMM::ContextImpl &context, bool includeForces, bool includeEnergy) = 0;
};

}  // namespace EquiformerOpenMM
