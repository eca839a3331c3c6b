#include "EquiformerForceProxy.h"

#include "openmm/OpenMMException.h"
#include "openmm/serialization/SerializationNode.h"

#include <memory>
#include <typeinfo>

namespace EquiformerOpenMM {

namespace {
constexpr int kVersion = 1;

std::vector<int> readList(const OpenMM::SerializationNode &node, const std::string &list, const std::string &key)
{
  std::vector<int> out;
  for (const auto &child : node.getChildren())
    if (child.getName() == list)
      for (const auto &item : child.getChildren()) out.push_back(item.getIntProperty(key));
  return out;
}
}  // namespace

EquiformerForceProxy::EquiformerForceProxy() : OpenMM::SerializationProxy("EquiformerForce") {}

void EquiformerForceProxy::serialize(const void *object, OpenMM::SerializationNode &node) const
{
  const EquiformerForce &force = *static_cast<const EquiformerForce *>(object);
  node.setIntProperty("version", kVersion);
  node.setStringProperty("modelFile", force.getModelFile());
  node.setBoolProperty("usesPeriodic", force.usesPeriodicBoundaryConditions());
  node.setStringProperty("precision", force.getPrecision());
  node.setStringProperty("device", force.getDevice());
  node.setIntProperty("numThreads", force.getNumThreads());
  node.setIntProperty("forceGroup", force.getForceGroup());
  node.setStringProperty("name", force.getName());
  OpenMM::SerializationNode &numbers = node.createChildNode("AtomicNumbers");
  for (int z : force.getAtomicNumbers()) numbers.createChildNode("Atom").setIntProperty("z", z);
  OpenMM::SerializationNode &particles = node.createChildNode("Particles");
  for (int p : force.getParticles()) particles.createChildNode("Particle").setIntProperty("index", p);
}

void *EquiformerForceProxy::deserialize(const OpenMM::SerializationNode &node) const
{
  int version = node.getIntProperty("version");
  if (version < 1 || version > kVersion)
    throw OpenMM::OpenMMException("EquiformerForce: unsupported XML version " + std::to_string(version) +
                                  " (this plugin reads version " + std::to_string(kVersion) + ")");
  std::unique_ptr<EquiformerForce> force(new EquiformerForce(
      node.getStringProperty("modelFile"), readList(node, "AtomicNumbers", "z"), readList(node, "Particles", "index")));
  force->setUsesPeriodicBoundaryConditions(node.getBoolProperty("usesPeriodic", false));
  force->setPrecision(node.getStringProperty("precision", ""));
  force->setDevice(node.getStringProperty("device", "cpu"));
  force->setNumThreads(node.getIntProperty("numThreads", 0));
  force->setForceGroup(node.getIntProperty("forceGroup", 0));
  if (node.hasProperty("name")) force->setName(node.getStringProperty("name"));
  return force.release();
}

namespace {
// registered when the library is loaded (by OpenMM's plugin loader or by the dynamic linker)
struct RegisterProxy {
  RegisterProxy()
  {
    OpenMM::SerializationProxy::registerProxy(typeid(EquiformerForce), new EquiformerForceProxy());
  }
} registerProxy;
}  // namespace

}  // namespace EquiformerOpenMM
