// XML serialization of EquiformerForce: the model file path and the settings (the network
// itself is not copied into the XML; the file must stay where it is).
#pragma once

#include "EquiformerForce.h"
#include "openmm/serialization/SerializationProxy.h"

namespace EquiformerOpenMM {

class EQUIFORMER_OPENMM_EXPORT EquiformerForceProxy : public OpenMM::SerializationProxy {
 public:
  EquiformerForceProxy();
  void serialize(const void *object, OpenMM::SerializationNode &node) const override;
  void *deserialize(const OpenMM::SerializationNode &node) const override;
};

}  // namespace EquiformerOpenMM
