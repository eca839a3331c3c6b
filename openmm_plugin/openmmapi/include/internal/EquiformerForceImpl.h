// ForceImpl of EquiformerForce: owns the platform kernel of one Context.
#pragma once

#include "EquiformerForce.h"
#include "openmm/Kernel.h"
#include "openmm/internal/ForceImpl.h"

#include <map>
#include <string>
#include <vector>

namespace EquiformerOpenMM {

class EquiformerForceImpl : public OpenMM::ForceImpl {
 public:
  explicit EquiformerForceImpl(const EquiformerForce &owner) : owner(owner) {}
  void initialize(OpenMM::ContextImpl &context) override;
  const EquiformerForce &getOwner() const override { return owner; }
  double calcForcesAndEnergy(OpenMM::ContextImpl &context, bool includeForces, bool includeEnergy,
                             int groups) override;
  std::map<std::string, double> getDefaultParameters() override { return {}; }
  std::vector<std::string> getKernelNames() override;

 private:
  const EquiformerForce &owner;
  OpenMM::Kernel kernel;
};

}  // namespace EquiformerOpenMM
