#include "EquiformerKernelSetup.h"

#include "EquiformerKernels.h"
#include "equiformer/neighbors.h"
#include "openmm/OpenMMException.h"
#include "openmm/Platform.h"

#include <iostream>
#include <sstream>

namespace EquiformerOpenMM {

using OpenMM::OpenMMException;
using OpenMM::Vec3;

std::string equiformerFailure(const std::string &what) { return "EquiformerForce: " + what; }

void registerFactoryOnPlatforms(const std::function<OpenMM::KernelFactory *(const std::string &)> &make)
{
  for (int i = 0; i < OpenMM::Platform::getNumPlatforms(); ++i) {
    OpenMM::Platform &platform = OpenMM::Platform::getPlatform(i);
    if (OpenMM::KernelFactory *factory = make(platform.getName()))
      platform.registerKernelFactory(CalcEquiformerForceKernel::Name(), factory);
  }
}

void EquiformerKernelSetup::initialize(const OpenMM::System &system, const EquiformerForce &force,
                                       const std::string &device)
{
  try {
    model.reset(new equiformer::Model(force.getModelFile(), device));
  } catch (const std::exception &e) {
    throw OpenMMException(equiformerFailure(e.what()));
  }
  const equiformer::Model &m = *model;
  // precision: the network runs in the dtype it was exported in; a different request is refused
  const std::string &precision = force.getPrecision();
  const std::string wanted = precision == "single" ? "float32" : precision == "double" ? "float64" : "";
  if (!wanted.empty() && wanted != m.dtype())
    throw OpenMMException(equiformerFailure("precision '" + precision + "' was requested but the model " + m.path() +
                                            " was exported in " + m.dtype() + "; use the model's precision (or \"\") or "
                                            "re-export the model in " + wanted));

  // species from atomic numbers
  const std::vector<int> &numbers = force.getAtomicNumbers();
  const std::vector<int> &known = m.atomic_numbers();
  if (known.empty())
    throw OpenMMException(equiformerFailure("the model " + m.path() + " has no atomic_numbers metadata; re-export it "
                                            "with equiformer-export"));
  particles = force.getParticles();
  if (particles.empty())
    for (int i = 0; i < system.getNumParticles(); ++i) particles.push_back(i);
  species.assign(numbers.size(), -1);
  std::ostringstream missing;
  int nmissing = 0;
  for (size_t k = 0; k < numbers.size(); ++k) {
    for (size_t s = 0; s < known.size(); ++s)
      if (known[s] == numbers[k]) species[k] = static_cast<int64_t>(s);
    if (species[k] < 0 && nmissing++ < 5)
      missing << (nmissing > 1 ? "; " : "") << "particle " << particles[k] << ": atomic number " << numbers[k];
  }
  if (nmissing > 0) {
    std::string symbols;
    for (const auto &s : m.species_symbols()) symbols += (symbols.empty() ? "" : " ") + s;
    if (nmissing > 5) missing << " (and " << nmissing - 5 << " more)";
    throw OpenMMException(equiformerFailure("the model " + m.path() + " only knows the elements " + symbols +
                                            "; it cannot handle " + missing.str()));
  }

  nmToModel = equiformer::length_conversion("nm", m.length_unit());
  energyToKJ = equiformer::energy_conversion(m.energy_unit(), "kJ/mol");
  cutoff = m.cutoff();
  energyOffset = m.energy_offset();
  periodic = force.usesPeriodicBoundaryConditions();
  if (periodic) {
    Vec3 a, b, c;
    system.getDefaultPeriodicBoxVectors(a, b, c);
    double box[9];
    boxInModelUnits(a, b, c, box);
  }
  if (force.getNumThreads() > 0) equiformer::Model::set_num_threads(force.getNumThreads());
}

void EquiformerKernelSetup::checkBox(const double *box) const
{
  // the cell list checks the box too; this check reports it in nm, OpenMM's unit
  try {
    equiformer::check_box(box, cutoff, "nm", 1.0 / nmToModel);
  } catch (const std::exception &e) {
    throw OpenMMException(equiformerFailure(e.what()));
  }
}

void EquiformerKernelSetup::boxInModelUnits(const Vec3 &a, const Vec3 &b, const Vec3 &c, double *box) const
{
  const Vec3 *v[3] = {&a, &b, &c};
  for (int r = 0; r < 3; ++r)
    for (int k = 0; k < 3; ++k) box[3 * r + k] = (*v[r])[k] * nmToModel;
  checkBox(box);
}

void EquiformerKernelSetup::warnIfClose(double minDistance)
{
  if (warnedClose || !(minDistance < model->min_distance())) return;
  // OpenMM has no warning channel of its own: stderr, once per Context
  warnedClose = true;
  std::cerr << "EquiformerForce: warning: two atoms are " << minDistance / nmToModel << " nm apart, closer than the "
            << model->min_distance() / nmToModel
            << " nm the model is meant for: it has no repulsion there and its energy is not physical; reported once\n";
}

}  // namespace EquiformerOpenMM
