// One energy+forces call of a large graph allocates and frees gigabytes of per-edge tensors.
// glibc serves every block above its mmap threshold (32 MB at most) with a fresh mmap and
// unmaps it on free, so each MD step page-faults its whole working set in again, each page
// zeroed by the kernel first: more than half of a compiled package's call at the paper's L3
// settings on 500 atoms (docs/benchmarks.md). MD repeats the same call, so the runtime (like
// the Python engines, equiformer/host_memory.py) has large blocks served from the heap and
// the heap never trimmed: from the second step on the memory is mapped already. Resident
// memory stays at the largest call's.
#include "host_memory.h"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace equiformer {

bool keep_freed_host_memory()
{
  static const bool applied = [] {
    const char *env = std::getenv("EQUIFORMER_KEEP_FREED_MEMORY");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
#if defined(__GLIBC__)
    // M_MMAP_MAX 0: no mmap for large blocks; M_TRIM_THRESHOLD -1: never give the heap back
    return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1;
#else
    return false;
#endif
  }();
  return applied;
}

}  // namespace equiformer
