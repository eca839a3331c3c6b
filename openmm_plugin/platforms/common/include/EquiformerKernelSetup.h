// What every platform's CalcEquiformerForceKernel does the same way (Reference/CPU and CUDA):
// load the model, check the precision, map atomic numbers to species, the unit conversions,
// the periodic box check and the close-atoms warning. Compiled into each plugin library.
#pragma once

#include "EquiformerForce.h"
#include "equiformer/runtime.h"
#include "openmm/KernelFactory.h"
#include "openmm/System.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace EquiformerOpenMM {

// Each plugin library's registerKernelFactories(): registers, on every platform loaded so far,
// the factory that MAKE returns for the platform's name (nullptr: not a platform of this library).
void registerFactoryOnPlatforms(const std::function<OpenMM::KernelFactory *(const std::string &)> &make);

struct EquiformerKernelSetup {
  std::unique_ptr<equiformer::Model> model;
  std::vector<int> particles;     // System index of every ML atom
  std::vector<int64_t> species;   // model species index of every ML atom
  bool periodic = false;
  double nmToModel = 1.0;         // model length units per nm
  double energyToKJ = 1.0;        // kJ/mol per model energy unit
  double cutoff = 0.0;            // model length unit
  double energyOffset = 0.0;      // model energy unit, once per system
  bool warnedClose = false;       // the close-atoms warning was given (once per Context)

  // Loads FORCE's model on DEVICE (a libtorch device string) and checks everything that can
  // be checked before the first step; throws OpenMM::OpenMMException naming the problem.
  void initialize(const OpenMM::System &system, const EquiformerForce &force, const std::string &device);
  // Refuses a box (9 numbers, rows = box vectors, model length unit) the neighbour search
  // cannot handle; the message gives the widths in nm.
  void checkBox(const double *boxModelUnits) const;
  // The box vectors a, b, c (nm) in model units into box[9], checked.
  void boxInModelUnits(const OpenMM::Vec3 &a, const OpenMM::Vec3 &b, const OpenMM::Vec3 &c, double *box) const;
  // Warns on stderr (once per Context) when two atoms are closer than the model is meant for.
  void warnIfClose(double minDistanceModelUnits);
  // kJ/mol/nm per model force unit
  double forceToKJPerNm() const { return energyToKJ * nmToModel; }
};

// "EquiformerForce: " + what
std::string equiformerFailure(const std::string &what);

}  // namespace EquiformerOpenMM
