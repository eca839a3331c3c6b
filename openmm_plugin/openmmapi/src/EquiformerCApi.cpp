// A small C interface over EquiformerForce for the Python module (ctypes), so that Python
// needs no compiled binding: equiformer.openmm.native creates the force through OpenMM's own
// XmlSerializer (a genuine openmm.Force proxy) and reads / changes its settings through
// these functions, given the C++ address of the Force (int(force.this)).
// Every function returns a negative value on error; equiformer_openmm_last_error() says why.
#include "EquiformerForce.h"

#include "openmm/Force.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <exception>
#include <string>
#include <vector>

namespace {

thread_local std::string lastError;

EquiformerOpenMM::EquiformerForce *cast(void *pointer)
{
  auto *force = dynamic_cast<EquiformerOpenMM::EquiformerForce *>(static_cast<OpenMM::Force *>(pointer));
  if (force == nullptr) throw std::invalid_argument("the object is not an EquiformerForce");
  return force;
}

template <class F>
int guarded(F &&body)
{
  try {
    return body();
  } catch (const std::exception &e) {
    lastError = e.what();
  } catch (...) {
    lastError = "unknown C++ exception";
  }
  return -1;
}

int copyOut(const std::string &value, char *buffer, int size)
{
  if (buffer != nullptr && size > 0) {
    size_t n = std::min(value.size(), static_cast<size_t>(size - 1));
    std::memcpy(buffer, value.data(), n);
    buffer[n] = '\0';
  }
  return static_cast<int>(value.size());
}

}  // namespace

#define CAPI extern "C" EQUIFORMER_OPENMM_EXPORT

CAPI int equiformer_openmm_abi_version() { return 1; }

CAPI const char *equiformer_openmm_last_error() { return lastError.c_str(); }

// 1 when POINTER (an OpenMM::Force*) is an EquiformerForce, else 0
CAPI int equiformer_openmm_is_force(void *pointer)
{
  return dynamic_cast<EquiformerOpenMM::EquiformerForce *>(static_cast<OpenMM::Force *>(pointer)) ? 1 : 0;
}

// KEY: modelFile | precision | device. Returns the full length (copies at most SIZE-1 chars).
CAPI int equiformer_openmm_get_string(void *pointer, const char *key, char *buffer, int size)
{
  return guarded([&] {
    auto *f = cast(pointer);
    std::string k = key;
    if (k == "modelFile") return copyOut(f->getModelFile(), buffer, size);
    if (k == "precision") return copyOut(f->getPrecision(), buffer, size);
    if (k == "device") return copyOut(f->getDevice(), buffer, size);
    throw std::invalid_argument("unknown string setting '" + k + "'");
  });
}

CAPI int equiformer_openmm_set_string(void *pointer, const char *key, const char *value)
{
  return guarded([&] {
    auto *f = cast(pointer);
    std::string k = key;
    if (k == "modelFile") f->setModelFile(value);
    else if (k == "precision") f->setPrecision(value);
    else if (k == "device") f->setDevice(value);
    else throw std::invalid_argument("unknown string setting '" + k + "'");
    return 0;
  });
}

// KEY: atomicNumbers | particles. Returns the full count (copies at most SIZE values).
CAPI int equiformer_openmm_get_ints(void *pointer, const char *key, int *buffer, int size)
{
  return guarded([&] {
    auto *f = cast(pointer);
    std::string k = key;
    const std::vector<int> *v;
    if (k == "atomicNumbers") v = &f->getAtomicNumbers();
    else if (k == "particles") v = &f->getParticles();
    else throw std::invalid_argument("unknown list setting '" + k + "'");
    for (int i = 0; i < size && i < static_cast<int>(v->size()); ++i) buffer[i] = (*v)[i];
    return static_cast<int>(v->size());
  });
}

CAPI int equiformer_openmm_set_ints(void *pointer, const char *key, const int *values, int count)
{
  return guarded([&] {
    auto *f = cast(pointer);
    std::string k = key;
    std::vector<int> v(values, values + count);
    if (k == "atomicNumbers") f->setAtomicNumbers(v);
    else if (k == "particles") f->setParticles(v);
    else throw std::invalid_argument("unknown list setting '" + k + "'");
    return 0;
  });
}

// KEY: usesPeriodic | numThreads
CAPI int equiformer_openmm_get_int(void *pointer, const char *key, int *value)
{
  return guarded([&] {
    auto *f = cast(pointer);
    std::string k = key;
    if (k == "usesPeriodic") *value = f->usesPeriodicBoundaryConditions() ? 1 : 0;
    else if (k == "numThreads") *value = f->getNumThreads();
    else throw std::invalid_argument("unknown integer setting '" + k + "'");
    return 0;
  });
}

CAPI int equiformer_openmm_set_int(void *pointer, const char *key, int value)
{
  return guarded([&] {
    auto *f = cast(pointer);
    std::string k = key;
    if (k == "usesPeriodic") f->setUsesPeriodicBoundaryConditions(value != 0);
    else if (k == "numThreads") f->setNumThreads(value);
    else throw std::invalid_argument("unknown integer setting '" + k + "'");
    return 0;
  });
}
