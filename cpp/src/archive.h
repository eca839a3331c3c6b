// Integrity of the zip archives libtorch reads (TorchScript files, .pt2 packages): libtorch's reader does not
// check the CRC-32 the archive stores for each entry, so a file with flipped bytes loads
// silently and gives other numbers. Internal to the runtime (not installed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// One entry of an archive's central directory.
struct ArchiveEntry {
  std::string name;
  int method = 0;                 // 0: stored, 8: deflated
  uint32_t crc = 0;
  uint64_t compressed_size = 0, size = 0;
  uint64_t local_offset = 0;      // of its local header
};

// The entries of the zip archive PATH in directory order (empty when it is not a readable zip).
std::vector<ArchiveEntry> archive_entries(const std::string &path);

// The bytes of the stored (uncompressed) entry NAME of PATH, checked against its CRC-32, into
// OUT. Returns "" on success, else a sentence saying what is wrong (no such entry, compressed,
// damaged), to follow the file's name.
std::string read_stored_entry(const std::string &path, const std::string &name, std::string &out);

}  // namespace equiformer
