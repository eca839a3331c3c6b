#include "ReferenceEquiformerKernels.h"

#include "openmm/OpenMMException.h"
#include "openmm/internal/ContextImpl.h"
#include "openmm/reference/ReferencePlatform.h"

namespace EquiformerOpenMM {

using OpenMM::OpenMMException;
using OpenMM::Vec3;

namespace {

OpenMM::ReferencePlatform::PlatformData &platformData(OpenMM::ContextImpl &context)
{
  return *static_cast<OpenMM::ReferencePlatform::PlatformData *>(context.getPlatformData());
}

}  // namespace

ReferenceCalcEquiformerForceKernel::~ReferenceCalcEquiformerForceKernel() = default;

void ReferenceCalcEquiformerForceKernel::initialize(const OpenMM::System &system, const EquiformerForce &force)
{
  setup.initialize(system, force, force.getDevice().empty() ? "cpu" : force.getDevice());
  positions.resize(3 * setup.particles.size());
}

double ReferenceCalcEquiformerForceKernel::execute(OpenMM::ContextImpl &context, bool includeForces, bool)
{
  OpenMM::ReferencePlatform::PlatformData &data = platformData(context);
  const std::vector<Vec3> &pos = *data.positions;
  const std::vector<int> &particles = setup.particles;
  const size_t n = particles.size();
  for (size_t k = 0; k < n; ++k)
    for (int c = 0; c < 3; ++c) positions[3 * k + c] = pos[particles[k]][c] * setup.nmToModel;
  double box[9];
  if (setup.periodic) {
    const Vec3 *v = data.periodicBoxVectors;
    setup.boxInModelUnits(v[0], v[1], v[2], box);
  }
  try {
    cells.build(static_cast<int>(n), positions.data(), setup.periodic ? box : nullptr, setup.cutoff, edges);
    setup.model->compute(static_cast<int64_t>(n), setup.species.data(), static_cast<int64_t>(edges.size()),
                         edges.src.data(), edges.dst.data(), edges.vectors.data(), static_cast<int64_t>(n), false,
                         result);
  } catch (const std::exception &e) {
    throw OpenMMException(equiformerFailure(e.what()));
  }
  setup.warnIfClose(result.min_distance);
  if (includeForces) {
    std::vector<Vec3> &forces = *data.forces;
    const double scale = setup.forceToKJPerNm();  // model energy / model length -> kJ/mol/nm
    for (size_t k = 0; k < n; ++k) {
      Vec3 &f = forces[particles[k]];
      for (int c = 0; c < 3; ++c) f[c] += scale * result.forces[3 * k + c];
    }
  }
  return (result.energy + setup.energyOffset) * setup.energyToKJ;
}

}  // namespace EquiformerOpenMM
