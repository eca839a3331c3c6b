// The pair style's library (libequiformer_lammps.so, linked to libtorch). LAMMPS never opens
// it itself: the loader equiformerplugin.so (equiformerplugin.cpp) opens it after checking
// the LAMMPS and torch versions, and creates pair styles through this one C function.

#include "pair_equiformer.h"

extern "C" __attribute__((visibility("default"))) void *equiformer_lammps_new_pair(void *lmp)
{
  LAMMPS_NS::Pair *pair = new LAMMPS_NS::PairEquiformer((LAMMPS_NS::LAMMPS *) lmp);
  return pair;
}
