// The plugin's C interface for Python (ctypes, equiformer.openmm.native).
//
// Why it exists: OpenMM's Python layer (SWIG) makes Python objects only for C++ classes
// compiled into a SWIG module, and this plugin has none (it would need SWIG and a compiled
// extension per Python version at build time). Python therefore creates an EquiformerForce
// through OpenMM's XmlSerializer (our serialization proxy builds it, SWIG hands it back as an
// openmm.Force) and reads its settings from its XML. The one thing Python cannot do that way
// is change the settings of an existing force, which may already belong to a System: it
// builds a second force from edited XML and copies it over the first with this function.
#include "EquiformerForce.h"

#include "openmm/Force.h"

#define CAPI extern "C" EQUIFORMER_OPENMM_EXPORT

// Bumped whenever a function below changes, so that Python refuses a stale library.
CAPI int equiformer_openmm_abi_version() { return 2; }

// Copies every setting of SOURCE (force group and name included) into TARGET; both are
// OpenMM::Force pointers (Python: int(force.this)). Returns 0, or -1 when either is not an
// EquiformerForce.
CAPI int equiformer_openmm_assign(void *target, const void *source)
{
  auto *to = dynamic_cast<EquiformerOpenMM::EquiformerForce *>(static_cast<OpenMM::Force *>(target));
  auto *from = dynamic_cast<const EquiformerOpenMM::EquiformerForce *>(static_cast<const OpenMM::Force *>(source));
  if (to == nullptr || from == nullptr) return -1;
  *to = *from;
  return 0;
}
