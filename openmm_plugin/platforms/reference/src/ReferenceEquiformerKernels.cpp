#include "ReferenceEquiformerKernels.h"

#include "openmm/OpenMMException.h"
#include "openmm/internal/ContextImpl.h"
#include "openmm/reference/ReferencePlatform.h"

#include <iostream>
#include <sstream>

namespace EquiformerOpenMM {

using OpenMM::OpenMMException;
using OpenMM::Vec3;

namespace {

OpenMM::ReferencePlatform::PlatformData &platformData(OpenMM::ContextImpl &context)
{
  return *static_cast<OpenMM::ReferencePlatform::PlatformData *>(context.getPlatformData());
}

std::string fail(const std::string &what) { return "EquiformerForce: " + what; }

}  // namespace

ReferenceCalcEquiformerForceKernel::~ReferenceCalcEquiformerForceKernel() = default;

void ReferenceCalcEquiformerForceKernel::initialize(const OpenMM::System &system, const EquiformerForce &force)
{
  try {
    model.reset(new equiformer::Model(force.getModelFile(), force.getDevice().empty() ? "cpu" : force.getDevice()));
  } catch (const std::exception &e) {
    throw OpenMMException(fail(e.what()));
  }
  const equiformer::Model &m = *model;
  // precision: the network runs in the dtype it was exported in; a different request is refused
  const std::string &precision = force.getPrecision();
  const std::string wanted = precision == "single" ? "float32" : precision == "double" ? "float64" : "";
  if (!wanted.empty() && wanted != m.dtype())
    throw OpenMMException(fail("precision '" + precision + "' was requested but the model " + m.path() +
                               " was exported in " + m.dtype() + "; use the model's precision (or \"\") or "
                               "re-export the model in " + wanted));

  // species from atomic numbers
  const std::vector<int> &numbers = force.getAtomicNumbers();
  const std::vector<int> &known = m.atomic_numbers();
  if (known.empty())
    throw OpenMMException(fail("the model " + m.path() + " has no atomic_numbers metadata; re-export it with "
                               "equiformer-export"));
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
    throw OpenMMException(fail("the model " + m.path() + " only knows the elements " + symbols +
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
    double box[9] = {a[0], a[1], a[2], b[0], b[1], b[2], c[0], c[1], c[2]};
    for (double &x : box) x *= nmToModel;
    checkBox(box);
  }
  if (force.getNumThreads() > 0) equiformer::Model::set_num_threads(force.getNumThreads());
  positions.resize(3 * particles.size());
}

void ReferenceCalcEquiformerForceKernel::checkBox(const double *box) const
{
  // the cell list checks the box too; this check reports it in nm, OpenMM's unit
  try {
    equiformer::check_box(box, cutoff, "nm", 1.0 / nmToModel);
  } catch (const std::exception &e) {
    throw OpenMMException(fail(e.what()));
  }
}

double ReferenceCalcEquiformerForceKernel::execute(OpenMM::ContextImpl &context, bool includeForces, bool)
{
  OpenMM::ReferencePlatform::PlatformData &data = platformData(context);
  const std::vector<Vec3> &pos = *data.positions;
  const size_t n = particles.size();
  for (size_t k = 0; k < n; ++k)
    for (int c = 0; c < 3; ++c) positions[3 * k + c] = pos[particles[k]][c] * nmToModel;
  double box[9];
  if (periodic) {
    const Vec3 *v = data.periodicBoxVectors;
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) box[3 * r + c] = v[r][c] * nmToModel;
    checkBox(box);
  }
  try {
    cells.build(static_cast<int>(n), positions.data(), periodic ? box : nullptr, cutoff, edges);
    model->compute(static_cast<int64_t>(n), species.data(), static_cast<int64_t>(edges.size()), edges.src.data(),
                   edges.dst.data(), edges.vectors.data(), static_cast<int64_t>(n), false, result);
  } catch (const std::exception &e) {
    throw OpenMMException(fail(e.what()));
  }
  if (!warnedClose && result.min_distance < model->min_distance()) {
    // OpenMM has no warning channel of its own: stderr, once per Context
    warnedClose = true;
    std::cerr << "EquiformerForce: warning: two atoms are " << result.min_distance / nmToModel
              << " nm apart, closer than the " << model->min_distance() / nmToModel
              << " nm the model is meant for: it has no repulsion there and its energy is not physical; "
                 "reported once\n";
  }
  if (includeForces) {
    std::vector<Vec3> &forces = *data.forces;
    const double scale = energyToKJ * nmToModel;  // model energy / model length -> kJ/mol/nm
    for (size_t k = 0; k < n; ++k) {
      Vec3 &f = forces[particles[k]];
      for (int c = 0; c < 3; ++c) f[c] += scale * result.forces[3 * k + c];
    }
  }
  return (result.energy + energyOffset) * energyToKJ;
}

}  // namespace EquiformerOpenMM
