// Integrity of the zip archives libtorch reads (TorchScript files): libtorch's reader does not
// check the CRC-32 the archive stores for each entry, so a file with flipped bytes loads
// silently and gives other numbers. Internal to the runtime (not installed).
#pragma once

#include <cstdint>
#include <string>

namespace equiformer {

struct ArchiveCheck {
  // empty when every entry matches its stored CRC-32; otherwise a sentence saying what is
  // wrong (not a zip archive, truncated, entry NAME damaged)
  std::string damage;
  // 64-bit digest of the entries' names, sizes and checksums: equal for equal contents
  uint64_t fingerprint = 0;
  // the file starts like a zip archive (damage then means a damaged archive, not another kind of file)
  bool zip = false;
};

ArchiveCheck check_archive(const std::string &path);

}  // namespace equiformer
