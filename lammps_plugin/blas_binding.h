// libtorch's BLAS calls inside a LAMMPS process (blas_binding.cpp).
#ifndef EQUIFORMER_LAMMPS_BLAS_BINDING_H
#define EQUIFORMER_LAMMPS_BLAS_BINDING_H

#include <string>

namespace equiformer_lammps {

struct BlasBinding {
  std::string torch;         // libtorch_cpu.so's path
  std::string interposer;    // the library libtorch's BLAS calls were bound to; empty: its own
  int slots = 0;             // libtorch's call slots that were bound there
  int rebound = 0;           // of those, now bound to libtorch's own routines
  std::string failure;       // why they were not rebound; empty: they were (or none needed)
};

// Binds libtorch_cpu.so's calls to its own BLAS/LAPACK routines where the dynamic linker bound
// them to another library's (only reports when `rebind` is false).
BlasBinding bind_torch_blas(bool rebind);

}    // namespace equiformer_lammps

#endif
