// Zip integrity check: walks the central directory (zip64 included) and compares each
// entry's CRC-32 with its data; reads single stored entries (a .pt2 package's metadata). TorchScript archives store tensors uncompressed (checked
// straight from the file) and their code deflated (inflated by libtorch's own reader).
#include "archive.h"

#include <caffe2/serialize/inline_container.h>

#include <array>
#include <cstdint>
#include <fstream>
#include <memory>
#include <vector>

namespace equiformer {

namespace {

const std::array<uint32_t, 256> &crc_table()
{
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  return table;
}

uint32_t crc32(const unsigned char *data, size_t n, uint32_t crc = 0)
{
  const auto &t = crc_table();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = t[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

uint64_t le(const unsigned char *p, int bytes)
{
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

class Reader {
 public:
  explicit Reader(const std::string &path) : in_(path, std::ios::binary)
  {
    if (in_) {
      in_.seekg(0, std::ios::end);
      size_ = static_cast<uint64_t>(in_.tellg());
    }
  }
  bool ok() const { return static_cast<bool>(in_); }
  uint64_t size() const { return size_; }
  // N bytes at OFFSET, or false when they lie outside the file
  bool read(uint64_t offset, size_t n, std::vector<unsigned char> &out)
  {
    if (offset > size_ || n > size_ - offset) return false;
    out.resize(n);
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(reinterpret_cast<char *>(out.data()), static_cast<std::streamsize>(n));
    return static_cast<bool>(in_);
  }
  // CRC-32 of N bytes at OFFSET, read in blocks
  bool crc(uint64_t offset, uint64_t n, uint32_t &out)
  {
    if (offset > size_ || n > size_ - offset) return false;
    std::vector<unsigned char> buf(1 << 20);
    in_.clear();
    in_.seekg(static_cast<std::streamoff>(offset));
    uint32_t c = 0;
    while (n > 0) {
      size_t k = static_cast<size_t>(std::min<uint64_t>(n, buf.size()));
      in_.read(reinterpret_cast<char *>(buf.data()), static_cast<std::streamsize>(k));
      if (!in_) return false;
      c = crc32(buf.data(), k, c);
      n -= k;
    }
    out = c;
    return true;
  }

 private:
  std::ifstream in_;
  uint64_t size_ = 0;
};

constexpr uint32_t kEndSig = 0x06054b50u, kEnd64Sig = 0x06064b50u, kLocator64Sig = 0x07064b50u;
constexpr uint32_t kCentralSig = 0x02014b50u, kLocalSig = 0x04034b50u;

void fnv(uint64_t &h, const void *data, size_t n)
{
  const auto *p = static_cast<const unsigned char *>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
}

// the central directory (zip64 included): every entry's name, method, sizes, CRC and local
// header offset; "" on success, else a sentence saying what is wrong
std::string read_directory(Reader &r, std::vector<ArchiveEntry> &out)
{
  out.clear();
  if (!r.ok()) return "cannot be read";
  const std::string truncated = "is truncated or damaged (its zip directory is unreadable)";
  // end of central directory: the last signature in the final 22 + 65535 bytes
  std::vector<unsigned char> tail;
  const uint64_t span = std::min<uint64_t>(r.size(), 22 + 65535);
  if (span < 22 || !r.read(r.size() - span, static_cast<size_t>(span), tail)) return "is not a zip archive (too short)";
  int64_t at = -1;
  for (int64_t i = static_cast<int64_t>(span) - 22; i >= 0; --i)
    if (le(&tail[i], 4) == kEndSig) {
      at = i;
      break;
    }
  if (at < 0) return "is not a zip archive or is truncated (no end-of-directory record)";
  const uint64_t end_offset = r.size() - span + static_cast<uint64_t>(at);
  uint64_t entries = le(&tail[at + 10], 2), dir_size = le(&tail[at + 12], 4), dir_offset = le(&tail[at + 16], 4);
  if (entries == 0xFFFF || dir_size == 0xFFFFFFFFu || dir_offset == 0xFFFFFFFFu) {
    std::vector<unsigned char> loc, rec;
    if (end_offset < 20 || !r.read(end_offset - 20, 20, loc) || le(&loc[0], 4) != kLocator64Sig) return truncated;
    if (!r.read(le(&loc[8], 8), 56, rec) || le(&rec[0], 4) != kEnd64Sig) return truncated;
    entries = le(&rec[32], 8);
    dir_size = le(&rec[40], 8);
    dir_offset = le(&rec[48], 8);
  }
  std::vector<unsigned char> dir;
  if (!r.read(dir_offset, static_cast<size_t>(dir_size), dir)) return truncated;
  size_t p = 0;
  for (uint64_t k = 0; k < entries; ++k) {
    if (p + 46 > dir.size() || le(&dir[p], 4) != kCentralSig) return truncated;
    ArchiveEntry entry;
    entry.method = static_cast<int>(le(&dir[p + 10], 2));
    entry.crc = static_cast<uint32_t>(le(&dir[p + 16], 4));
    uint64_t csize = le(&dir[p + 20], 4), usize = le(&dir[p + 24], 4), local = le(&dir[p + 42], 4);
    const size_t name_len = le(&dir[p + 28], 2), extra_len = le(&dir[p + 30], 2), comment_len = le(&dir[p + 32], 2);
    if (p + 46 + name_len + extra_len + comment_len > dir.size()) return truncated;
    entry.name.assign(reinterpret_cast<const char *>(&dir[p + 46]), name_len);
    // zip64 extra field: 8-byte values for the fields saturated above, in this order
    for (size_t e = p + 46 + name_len; e + 4 <= p + 46 + name_len + extra_len;) {
      const uint64_t id = le(&dir[e], 2), len = le(&dir[e + 2], 2);
      size_t q = e + 4;
      if (id == 0x0001) {
        if (usize == 0xFFFFFFFFu && q + 8 <= e + 4 + len) usize = le(&dir[q], 8), q += 8;
        if (csize == 0xFFFFFFFFu && q + 8 <= e + 4 + len) csize = le(&dir[q], 8), q += 8;
        if (local == 0xFFFFFFFFu && q + 8 <= e + 4 + len) local = le(&dir[q], 8);
      }
      e += 4 + len;
    }
    entry.compressed_size = csize;
    entry.size = usize;
    entry.local_offset = local;
    out.push_back(std::move(entry));
    p += 46 + name_len + extra_len + comment_len;
  }
  return "";
}

// offset of a stored entry's data (after its local header), or false when the header is lost
bool data_offset(Reader &r, const ArchiveEntry &entry, uint64_t &offset)
{
  std::vector<unsigned char> head;
  if (!r.read(entry.local_offset, 30, head) || le(&head[0], 4) != kLocalSig) return false;
  offset = entry.local_offset + 30 + le(&head[26], 2) + le(&head[28], 2);
  return true;
}

std::string check_entries(const std::string &path, uint64_t &fingerprint)
{
  Reader r(path);
  std::vector<ArchiveEntry> entries;
  const std::string error = read_directory(r, entries);
  if (!error.empty()) return error;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> inflater;  // opened for the first deflated entry
  for (const ArchiveEntry &entry : entries) {
    const std::string &name = entry.name;
    const uint32_t want = entry.crc;
    const uint64_t usize = entry.size;
    fnv(fingerprint, name.data(), name.size());
    fnv(fingerprint, &want, sizeof want);
    fnv(fingerprint, &usize, sizeof usize);
    if (entry.method == 8) {  // deflated: libtorch inflates it (without checking), the CRC is checked here
      uint32_t got = 0;
      try {
        if (!inflater) inflater = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
        auto record = inflater->getRecord(name.substr(name.find('/') + 1));
        got = crc32(static_cast<const unsigned char *>(std::get<0>(record).get()), std::get<1>(record));
      } catch (const std::exception &) {
        return "is damaged (entry '" + name + "' cannot be inflated)";
      }
      if (got != want) return "is damaged: the checksum of entry '" + name + "' does not match its contents";
      continue;
    }
    if (entry.method != 0) return "has entry '" + name + "' stored with zip method " + std::to_string(entry.method) +
                                  ", which TorchScript archives do not use";
    uint64_t data = 0;
    if (!data_offset(r, entry, data)) return "is damaged (entry '" + name + "' lost its header)";
    uint32_t got = 0;
    if (entry.compressed_size != usize || !r.crc(data, usize, got))
      return "is truncated or damaged (entry '" + name + "')";
    if (got != want) return "is damaged: the checksum of entry '" + name + "' does not match its contents";
  }
  return "";
}

}  // namespace

ArchiveCheck check_archive(const std::string &path)
{
  ArchiveCheck out;
  out.fingerprint = 0xcbf29ce484222325ull;  // FNV-1a offset basis
  out.damage = check_entries(path, out.fingerprint);
  std::vector<unsigned char> head;
  Reader r(path);
  out.zip = r.ok() && r.read(0, 4, head) && le(head.data(), 4) == kLocalSig;
  return out;
}

std::vector<ArchiveEntry> archive_entries(const std::string &path)
{
  Reader r(path);
  std::vector<ArchiveEntry> entries;
  if (!read_directory(r, entries).empty()) entries.clear();
  return entries;
}

std::string read_stored_entry(const std::string &path, const std::string &name, std::string &out)
{
  Reader r(path);
  std::vector<ArchiveEntry> entries;
  std::string error = read_directory(r, entries);
  if (!error.empty()) return error;
  for (const ArchiveEntry &entry : entries) {
    if (entry.name != name) continue;
    if (entry.method != 0)
      return "has entry '" + name + "' compressed (zip method " + std::to_string(entry.method) +
             "); the runtime reads it only stored uncompressed, as torch writes it";
    uint64_t data = 0;
    std::vector<unsigned char> bytes;
    if (entry.compressed_size != entry.size || !data_offset(r, entry, data) ||
        !r.read(data, static_cast<size_t>(entry.size), bytes))
      return "is truncated or damaged (entry '" + name + "')";
    if (crc32(bytes.data(), bytes.size()) != entry.crc)
      return "is damaged: the checksum of entry '" + name + "' does not match its contents";
    out.assign(bytes.begin(), bytes.end());
    return "";
  }
  return "has no entry '" + name + "'";
}

}  // namespace equiformer
