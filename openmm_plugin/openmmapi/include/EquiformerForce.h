// EquiformerForce: an exported Equiformer model (docs/model-format.md) as an OpenMM Force.
//
// The force applies the model to a set of particles of the System (all of them, or a subset
// for ML/MM), one chemical element per particle, with or without periodic boundary
// conditions. Nothing is loaded or checked until a Context is created: the model file, the
// elements, the precision and the periodic box are validated then, and every problem is
// reported as an OpenMM::OpenMMException.
#pragma once

#include "openmm/Force.h"

#include <string>
#include <vector>

#if defined(_WIN32)
#define EQUIFORMER_OPENMM_EXPORT __declspec(dllexport)
#else
#define EQUIFORMER_OPENMM_EXPORT __attribute__((visibility("default")))
#endif

namespace EquiformerOpenMM {

class EQUIFORMER_OPENMM_EXPORT EquiformerForce : public OpenMM::Force {
 public:
  // modelFile: path of an exported model (equiformer-export). atomicNumbers: the element of
  // every particle the model is applied to, in the order of `particles`; when `particles` is
  // empty the model is applied to all particles of the System and atomicNumbers has one
  // entry per particle.
  EquiformerForce(const std::string &modelFile, const std::vector<int> &atomicNumbers,
                  const std::vector<int> &particles = std::vector<int>());

  const std::string &getModelFile() const { return modelFile; }
  void setModelFile(const std::string &path) { modelFile = path; }

  const std::vector<int> &getAtomicNumbers() const { return atomicNumbers; }
  void setAtomicNumbers(const std::vector<int> &numbers) { atomicNumbers = numbers; }

  // Indices of the particles the model is applied to (ML/MM); empty = all particles.
  const std::vector<int> &getParticles() const { return particles; }
  void setParticles(const std::vector<int> &indices) { particles = indices; }

  // Periodic boundary conditions (the Context's triclinic box); off by default.
  bool usesPeriodicBoundaryConditions() const override { return periodic; }
  void setUsesPeriodicBoundaryConditions(bool value) { periodic = value; }

  // "" (the model's own dtype), "single" or "double". A request that differs from the dtype
  // the model was exported in is refused when the Context is created.
  const std::string &getPrecision() const { return precision; }
  void setPrecision(const std::string &value);

  // libtorch device of the network: "cpu" (default), "cuda", "cuda:K" or "auto".
  const std::string &getDevice() const { return device; }
  void setDevice(const std::string &value) { device = value; }

  // libtorch intra-op CPU threads (process wide); 0 keeps libtorch's default.
  int getNumThreads() const { return numThreads; }
  void setNumThreads(int value);

 protected:
  OpenMM::ForceImpl *createImpl() const override;

 private:
  std::string modelFile;
  std::vector<int> atomicNumbers;
  std::vector<int> particles;
  bool periodic = false;
  std::string precision;
  std::string device = "cpu";
  int numThreads = 0;
};

}  // namespace EquiformerOpenMM
