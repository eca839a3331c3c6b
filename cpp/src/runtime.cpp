// Implementation of equiformer::Model over libtorch: TorchScript files and compiled
// AOTInductor packages (.pt2).
#include "equiformer/runtime.h"

#include "archive.h"
#include "device_api.h"
#include "host_memory.h"
#include "jit_scope.h"
#include "package_layers.h"

#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <fstream>
#include <mutex>
#include <sstream>
#include <unordered_map>

namespace equiformer {

namespace {

constexpr const char *kFormat = "equiformer-model";
constexpr int kFormatVersion = 1;
constexpr const char *kHowToExport = "create one with `equiformer-export CHECKPOINT.pt MODEL.pt`";
constexpr const char *kHowToExportPackage = "create one with `equiformer-export CHECKPOINT.pt MODEL.pt2`";

const char *const kMetaKeys[] = {"format",        "format_version", "package_version",
                                 "cutoff",        "num_layers",     "interaction_range",
                                 "species_symbols", "atomic_numbers", "length_unit",
                                 "energy_unit",   "dtype",          "device",
                                 "energy_offset", "hyperparameters", "min_distance",
                                 "committee_size"};

// closest approach the model is meant for when the file does not say (docs/model-format.md)
constexpr double kDefaultMinDistanceAngstrom = 0.5;

std::string trim(const std::string &s)
{
  const char *ws = " \t\r\n";
  auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string &s)
{
  std::istringstream in(s);
  std::vector<std::string> out;
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

// metadata value `text` of `key` read whole by `convert` (std::stod, std::stol: text, &pos),
// else an Error saying it is not `what` ("a number", "an integer")
template <typename Convert>
auto parse_metadata(const std::string &path, const std::string &key, const std::string &text,
                    const char *what, Convert convert) -> decltype(convert(text, nullptr))
{
  try {
    size_t pos = 0;
    auto v = convert(text, &pos);
    if (trim(text.substr(pos)).empty()) return v;
  } catch (const std::exception &) {
  }
  throw Error(path + ": metadata '" + key + "' is not " + what + " ('" + text +
              "'); the file is damaged or was not written by equiformer-export");
}

double parse_double(const std::string &path, const std::string &key, const std::string &text)
{
  return parse_metadata(path, key, text, "a number",
                        [](const std::string &s, size_t *pos) { return std::stod(s, pos); });
}

long parse_int(const std::string &path, const std::string &key, const std::string &text)
{
  return parse_metadata(path, key, text, "an integer",
                        [](const std::string &s, size_t *pos) { return std::stol(s, pos); });
}

// EQUIFORMER_JIT_OPTIMIZE=0 turns TorchScript's graph optimisation off for debugging (libtorch
// 2.9 then fails on scripted forwards that call methods in loops: "Expected Object but got
// None"). Which executor our calls run on: LegacyExecutorScope (jit_scope.h).
void configure_jit_once()
{
  static std::once_flag once;
  std::call_once(once, [] {
    const char *env = std::getenv("EQUIFORMER_JIT_OPTIMIZE");
    if (env && std::string(env) == "0") torch::jit::setGraphExecutorOptimize(false);
  });
}

torch::Device resolve_device(const std::string &requested)
{
  std::string d = trim(requested);
  if (d.empty() || d == "cpu") return torch::Device(torch::kCPU);
  if (d == "auto") {
    return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  }
  if (d.rfind("cuda", 0) == 0) {
    int index = 0;
    if (d.size() > 4) {
      if (d[4] != ':') throw Error("unknown device '" + requested + "'; use cpu, cuda, cuda:K or auto");
      try {
        size_t pos = 0;
        index = std::stoi(d.substr(5), &pos);
        if (pos != d.size() - 5 || index < 0) throw std::invalid_argument("bad");
      } catch (const std::exception &) {
        throw Error("unknown device '" + requested + "'; use cpu, cuda, cuda:K or auto");
      }
    }
    if (!torch::cuda::is_available())
      throw Error("device '" + requested +
                  "' requested but libtorch sees no CUDA GPU on this machine (no GPU, no driver, or "
                  "a CPU-only libtorch); use device cpu (or auto)");
    int n = static_cast<int>(torch::cuda::device_count());
    if (index >= n)
      throw Error("device '" + requested + "' requested but libtorch sees only " + std::to_string(n) +
                  " CUDA GPU(s); use cuda:0 .. cuda:" + std::to_string(n - 1));
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw Error("unknown device '" + requested + "'; use cpu, cuda, cuda:K or auto");
}

// ---- compiled packages (.pt2)

// A JSON object whose values are strings (a package's wrapper_metadata.json) into OUT;
// numbers, true, false and null are kept as their text. False on anything else.
bool parse_string_map(const std::string &text, std::unordered_map<std::string, std::string> &out)
{
  size_t p = 0;
  auto skip = [&] {
    while (p < text.size() && (text[p] == ' ' || text[p] == '\t' || text[p] == '\n' || text[p] == '\r')) ++p;
  };
  auto hex4 = [&](uint32_t &v) {
    if (p + 4 > text.size()) return false;
    v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[p++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else return false;
    }
    return true;
  };
  auto utf8 = [](uint32_t c, std::string &s) {
    if (c < 0x80) {
      s += static_cast<char>(c);
    } else if (c < 0x800) {
      s += static_cast<char>(0xC0 | (c >> 6));
      s += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      s += static_cast<char>(0xE0 | (c >> 12));
      s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (c >> 18));
      s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (c & 0x3F));
    }
  };
  auto string = [&](std::string &s) {
    if (p >= text.size() || text[p] != '"') return false;
    ++p;
    s.clear();
    while (p < text.size()) {
      const char c = text[p++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        s += c;
        continue;
      }
      if (p >= text.size()) return false;
      const char e = text[p++];
      switch (e) {
        case '"': s += '"'; break;
        case '\\': s += '\\'; break;
        case '/': s += '/'; break;
        case 'b': s += '\b'; break;
        case 'f': s += '\f'; break;
        case 'n': s += '\n'; break;
        case 'r': s += '\r'; break;
        case 't': s += '\t'; break;
        case 'u': {
          uint32_t c1 = 0;
          if (!hex4(c1)) return false;
          if (c1 >= 0xD800 && c1 < 0xDC00) {  // a surrogate pair
            uint32_t c2 = 0;
            if (p + 2 > text.size() || text[p] != '\\' || text[p + 1] != 'u') return false;
            p += 2;
            if (!hex4(c2) || c2 < 0xDC00 || c2 >= 0xE000) return false;
            c1 = 0x10000 + ((c1 - 0xD800) << 10) + (c2 - 0xDC00);
          } else if (c1 >= 0xDC00 && c1 < 0xE000) {
            return false;
          }
          utf8(c1, s);
          break;
        }
        default: return false;
      }
    }
    return false;
  };
  out.clear();
  skip();
  if (p >= text.size() || text[p++] != '{') return false;
  skip();
  if (p < text.size() && text[p] == '}') {
    ++p;
  } else {
    while (true) {
      std::string key, value;
      skip();
      if (!string(key)) return false;
      skip();
      if (p >= text.size() || text[p++] != ':') return false;
      skip();
      if (p < text.size() && text[p] == '"') {
        if (!string(value)) return false;
      } else {  // a scalar literal, kept as text
        const size_t b = p;
        while (p < text.size() && std::string(",} \t\r\n").find(text[p]) == std::string::npos) ++p;
        value = text.substr(b, p - b);
        if (value.empty() || value[0] == '{' || value[0] == '[') return false;
      }
      out[key] = value;
      skip();
      if (p >= text.size()) return false;
      if (text[p] == ',') {
        ++p;
        continue;
      }
      if (text[p++] != '}') return false;
      break;
    }
  }
  skip();
  return p == text.size();
}

// Whether the archive is a PyTorch 2 archive (.pt2): an entry <stem>/archive_format holding
// "pt2". Sets META_ENTRY to the compiled model's metadata entry ("" when there is none, or
// several).
bool is_pt2_archive(const std::string &path, std::string &meta_entry)
{
  bool pt2 = false;
  int found = 0;
  meta_entry.clear();
  for (const ArchiveEntry &e : archive_entries(path)) {
    const std::string &n = e.name;
    const std::string tag = "archive_format";
    if (!pt2 && (n == tag || (n.size() > tag.size() && n.compare(n.size() - tag.size(), tag.size(), tag) == 0 &&
                              n[n.size() - tag.size() - 1] == '/'))) {
      std::string text;
      if (e.size < 64 && read_stored_entry(path, n, text).empty() && trim(text) == "pt2") pt2 = true;
    }
    const std::string suffix = "wrapper_metadata.json";
    if (n.find("/data/aotinductor/model/") != std::string::npos && n.size() >= suffix.size() &&
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
      meta_entry = n;
      ++found;
    }
  }
  if (found != 1) meta_entry.clear();
  return pt2;
}

// the torch release this runtime was compiled against, e.g. "2.9.1"
std::string runtime_torch_version()
{
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

// ATen's CPU capability names in the order of the x86 instruction sets they use ("NO AVX" is
// ATen's name for DEFAULT there); other architectures' names are compared for equality only
int x86_cpu_level(const std::string &isa)
{
  if (isa == "DEFAULT" || isa == "NO AVX") return 0;
  if (isa == "AVX2") return 1;
  if (isa == "AVX512") return 2;
  return -1;
}

bool cpu_supports(const std::string &isa, const std::string &here)
{
  if (isa == here) return true;
  const int want = x86_cpu_level(isa), have = x86_cpu_level(here);
  if (isa == "DEFAULT" || isa == "NO AVX") return true;  // baseline code runs on every CPU of its architecture
  return want >= 0 && have >= 0 && have >= want;
}

}  // namespace

double energy_conversion(const std::string &from, const std::string &to)
{
  // energies in kJ/mol: 1 eV = e * N_A / 1000 kJ/mol (exact with the 2019 SI), 1 kcal = 4.184 kJ
  constexpr double eV_kJmol = 1.602176634e-19 * 6.02214076e23 / 1000.0;  // 96.48533212331...
  auto in_kJmol = [](const std::string &u) -> double {
    if (u == "eV") return eV_kJmol;
    if (u == "kcal/mol") return 4.184;
    if (u == "kJ/mol") return 1.0;
    throw Error("unknown energy unit '" + u + "'; known: eV, kcal/mol, kJ/mol");
  };
  return in_kJmol(from) / in_kJmol(to);
}

double length_conversion(const std::string &from, const std::string &to)
{
  auto in_A = [](const std::string &u) -> double {
    if (u == "Angstrom") return 1.0;
    if (u == "nm") return 10.0;
    throw Error("unknown length unit '" + u + "'; known: Angstrom, nm");
  };
  return in_A(from) / in_A(to);
}

struct Model::Impl {
  std::string path;
  mutable torch::jit::Module module;
  torch::Device device{torch::kCPU};
  std::string device_name;
  torch::ScalarType dtype = torch::kFloat64;
  std::unordered_map<std::string, std::string> meta;
  double cutoff = 0.0, interaction_range = 0.0, energy_offset = 0.0, min_distance = 0.0;
  int num_layers = 1;
  int committee_size = 1;  // members of a committee file (metadata committee_size, absent: 1)
  std::vector<std::string> symbols;
  std::vector<int> numbers;
  std::string length_unit, energy_unit, dtype_name;
  bool layer_methods = false;
  // per-layer protocol: `features` (edge_features / layer / layer_by_chunks / layer_vjp /
  // edge_features_vjp, current exports) or `vectors` (embed / block / readout on edge vectors)
  bool feature_layers = false;
  uint64_t fingerprint = 0;
  int64_t chunked_edges = -1;  // the model's threshold for its chunked schedule (-1: never)
  // a compiled AOTInductor package (.pt2) instead of a TorchScript module
  bool package = false;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  // its layer entries (package_layers.h): graphs above chunked_edges and per-layer exchange;
  // absent in packages exported with --chunked-above -1
  std::unique_ptr<detail::PackageLayers> layers;

  // the format's metadata checks, the same for TorchScript files and packages (META filled)
  void read_metadata(const std::string &kind, const char *how_to_export);
  void load_package(const std::string &meta_entry, const std::string &requested_device);
  // one call of the package: OUT's energy and atom energies, GVEC = dE/d(edge vector) [3 E]
  void run_package(int64_t n_atoms, const int64_t *species, int64_t n_edges, const int64_t *src,
                   const int64_t *dst, const double *edge_vectors, int64_t n_local, Result &out,
                   std::vector<double> &gvec) const;
  // the same on tensors on the model's device (run_package's core, also used by the device
  // API, device_api.cpp): atom energies [N] and dE/d(edge vector) [E, 3], padding added here
  std::pair<torch::Tensor, torch::Tensor> package_forward(const torch::Tensor &species, const torch::Tensor &index,
                                                          const torch::Tensor &vec, int64_t n_local) const;
  mutable std::vector<int64_t> feature_sizes;  // layer_feature_sizes(), found on first use

  // one per-layer evaluation (compute_layered): atom energies [N] and dE/d(edge vector) [E, 3]
  struct Layered {
    torch::Tensor atom_energies, edge_gradient;
  };
  Layered layered_by_features(const torch::Tensor &species, const torch::Tensor &index, const torch::Tensor &vec,
                              int64_t n_local, const std::vector<int64_t> &width, LayerExchange &exchange,
                              bool chunked) const;
  Layered layered_by_vectors(const torch::Tensor &species, const torch::Tensor &index, const torch::Tensor &vec,
                             int64_t n_local, const std::vector<int64_t> &width, LayerExchange &exchange,
                             bool chunked) const;
  Layered layered_by_package(const torch::Tensor &species, const torch::Tensor &index, const torch::Tensor &vec,
                             int64_t n_local, const std::vector<int64_t> &width, LayerExchange &exchange) const;
  // layer s's output with its ghost rows replaced by their owners' (a new leaf), and back:
  // the gradient with respect to layer s's output from that with respect to the exchanged copy
  // (with exchange.boundary_rows(), only the boundary rows and the ghost rows cross between
  // the device and the host)
  torch::Tensor exchange_forward(const torch::Tensor &y, int s, int64_t n_local, const std::vector<int64_t> &width,
                                 LayerExchange &exchange) const;
  torch::Tensor exchange_reverse(const torch::Tensor &g, const torch::Tensor &y, int s, int64_t n_local,
                                 const std::vector<int64_t> &width, LayerExchange &exchange) const;

  // the model's inputs on its device: species [N], edge_index [2, E] (row 0 source), edge
  // vectors [E, 3] in the model dtype
  void input_tensors(int64_t n_atoms, const int64_t *species, int64_t n_edges, const int64_t *src, const int64_t *dst,
                     const double *edge_vectors, torch::Tensor &t_species, torch::Tensor &t_index,
                     torch::Tensor &t_vec) const
  {
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    t_species = torch::from_blob(const_cast<int64_t *>(species), {n_atoms}, i64).to(device, false, true);
    t_index = torch::empty({2, n_edges}, i64);
    if (n_edges > 0) {
      std::copy(src, src + n_edges, t_index.data_ptr<int64_t>());
      std::copy(dst, dst + n_edges, t_index.data_ptr<int64_t>() + n_edges);
    }
    t_index = t_index.to(device);
    t_vec = torch::from_blob(const_cast<double *>(edge_vectors), {n_edges, 3},
                             torch::TensorOptions().dtype(torch::kFloat64))
                .to(device, dtype, false, true);
  }
};

Model::Model(const std::string &path, const std::string &device) : impl_(new Impl)
{
  configure_jit_once();
  keep_freed_host_memory();
  Impl &m = *impl_;
  m.path = path;
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe.good())
      throw Error("model file '" + path + "' does not exist or cannot be read; " + kHowToExport);
  }
  const ArchiveCheck archive = check_archive(path);
  if (!archive.zip)
    throw Error("'" + path + "' is not an exported Equiformer model (not a TorchScript archive); " + kHowToExport);
  if (!archive.damage.empty())
    throw Error("model file '" + path + "' " + archive.damage + "; the file was corrupted (disk, copy or "
                "transfer): copy it again or re-export it with equiformer-export");
  m.fingerprint = archive.fingerprint;

  // a compiled package is recognised by its content (the archive_format entry), not its name
  std::string meta_entry;
  if (is_pt2_archive(path, meta_entry)) {
    m.load_package(meta_entry, device);
    return;
  }

  m.device = resolve_device(device);
  m.device_name = m.device.str();

  torch::jit::ExtraFilesMap extra;
  for (const char *key : kMetaKeys) extra[key] = "";
  try {
    m.module = torch::jit::load(path, m.device, extra);
  } catch (const std::exception &e) {
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    throw Error("'" + path + "' is not an exported Equiformer model (TorchScript load failed: " + why +
                "); " + kHowToExport);
  }
  for (auto &kv : extra) m.meta[kv.first] = trim(kv.second);
  m.read_metadata("a TorchScript file", kHowToExport);

  for (const char *name : {"chunked_edges", "layerwise_edges"})  // the second: files exported before
    if (m.module.hasattr(name) && m.module.attr(name).isInt()) {
      m.chunked_edges = m.module.attr(name).toInt();
      break;
    }
  m.module.eval();
  auto has = [&](const char *method) { return m.module.find_method(method).has_value(); };
  m.feature_layers = has("edge_features") && has("layer") && has("layer_by_chunks") && has("layer_vjp") &&
                     has("edge_features_vjp");
  m.layer_methods = m.feature_layers || (has("embed") && has("block") && has("readout"));
}

void Model::Impl::read_metadata(const std::string &kind, const char *how_to_export)
{
  Impl &m = *this;
  if (m.meta["format"] != kFormat)
    throw Error("'" + path + "' is " + kind + " but not an exported Equiformer model (no 'format' = '" +
                kFormat + "' metadata); " + how_to_export);
  const std::string &ver = m.meta["format_version"];
  if (ver != std::to_string(kFormatVersion))
    throw Error("'" + path + "' has model format version " + (ver.empty() ? "(none)" : ver) +
                ", this runtime reads version " + std::to_string(kFormatVersion) +
                "; re-export it with this package's equiformer-export (or update the runtime)");
  for (const char *key : {"cutoff", "species_symbols", "length_unit", "energy_unit", "dtype"})
    if (m.meta[key].empty())
      throw Error("'" + path + "' lacks the '" + std::string(key) + "' metadata; re-export it with equiformer-export");

  m.cutoff = parse_double(path, "cutoff", m.meta["cutoff"]);
  if (!(m.cutoff > 0.0)) throw Error("'" + path + "': metadata cutoff must be positive");
  m.num_layers = m.meta["num_layers"].empty() ? 1 : static_cast<int>(parse_int(path, "num_layers", m.meta["num_layers"]));
  if (m.num_layers < 1) throw Error("'" + path + "': metadata num_layers must be at least 1");
  // a file without interaction_range: assume the widest Equiformer receptive field (the
  // embedding, every block and an attention head each look one cutoff further)
  m.interaction_range = m.meta["interaction_range"].empty()
                            ? m.cutoff * (m.num_layers + 2)
                            : parse_double(path, "interaction_range", m.meta["interaction_range"]);
  m.energy_offset = m.meta["energy_offset"].empty() ? 0.0 : parse_double(path, "energy_offset", m.meta["energy_offset"]);
  m.committee_size = m.meta["committee_size"].empty()
                         ? 1
                         : static_cast<int>(parse_int(path, "committee_size", m.meta["committee_size"]));
  if (m.committee_size < 1) throw Error("'" + path + "': metadata committee_size must be at least 1");
  m.symbols = split(m.meta["species_symbols"]);
  for (const auto &z : split(m.meta["atomic_numbers"]))
    m.numbers.push_back(static_cast<int>(parse_int(path, "atomic_numbers", z)));
  if (!m.numbers.empty() && m.numbers.size() != m.symbols.size())
    throw Error("'" + path + "': species_symbols and atomic_numbers have different lengths");
  m.length_unit = m.meta["length_unit"];
  m.energy_unit = m.meta["energy_unit"];
  const double angstrom = length_conversion("Angstrom", m.length_unit);  // throws on unknown units
  m.min_distance = m.meta["min_distance"].empty() ? kDefaultMinDistanceAngstrom * angstrom
                                                 : parse_double(path, "min_distance", m.meta["min_distance"]);
  energy_conversion(m.energy_unit, "eV");
  m.dtype_name = m.meta["dtype"];
  if (m.dtype_name == "float64")
    m.dtype = torch::kFloat64;
  else if (m.dtype_name == "float32")
    m.dtype = torch::kFloat32;
  else
    throw Error("'" + path + "' has dtype '" + m.dtype_name + "', this runtime supports float32 and float64");
}

// A compiled AOTInductor package: its metadata is read from the archive and checked before
// its compiled code is loaded (code built for another torch or CPU must not run at all).
void Model::Impl::load_package(const std::string &meta_entry, const std::string &requested_device)
{
  if (meta_entry.empty())
    throw Error("'" + path + "' is a .pt2 archive but not an exported Equiformer model (no compiled model "
                "metadata); " + kHowToExportPackage);
  std::string text;
  const std::string problem = read_stored_entry(path, meta_entry, text);
  if (!problem.empty()) throw Error("model file '" + path + "' " + problem + "; re-export it with equiformer-export");
  std::unordered_map<std::string, std::string> raw;
  if (!parse_string_map(text, raw))
    throw Error("'" + path + "': its metadata entry '" + meta_entry + "' is not a JSON object of strings; the file "
                "is damaged or was not written by equiformer-export");
  for (auto &kv : raw) meta[kv.first] = trim(kv.second);
  package = true;
  read_metadata("a .pt2 package", kHowToExportPackage);
  // the package's compiled function returns one model's energies and edge gradient only
  if (committee_size > 1)
    throw Error("'" + path + "' is a .pt2 package of a committee of " + std::to_string(committee_size) +
                " models: committees as compiled packages are not available yet; use the committee's TorchScript "
                ".pt file");
  if (meta["container"] != "aoti")
    throw Error("'" + path + "' is a .pt2 archive but not an exported Equiformer model (container '" +
                meta["container"] + "', expected 'aoti'); " + kHowToExportPackage);

  const std::string built = meta["torch_version"].substr(0, meta["torch_version"].find('+'));
  const std::string here = runtime_torch_version();
  if (built != here)
    throw Error("'" + path + "' was compiled with torch " + (built.empty() ? "(unknown)" : built) +
                ", this runtime uses torch " + here + "; a .pt2 runs only with the torch it was compiled with: "
                "re-export it on this machine (or use the TorchScript .pt file)");

  // the package runs on the device kind it was compiled for; "auto" follows it
  const std::string compiled_for = meta["AOTI_DEVICE_KEY"].empty() ? "cpu" : meta["AOTI_DEVICE_KEY"];
  const bool cuda_package = compiled_for.rfind("cuda", 0) == 0;
  const std::string wanted = trim(requested_device);
  device = resolve_device(wanted == "auto" ? (cuda_package ? "cuda" : "cpu") : wanted);
  device_name = device.str();
  if (device.is_cuda() != cuda_package)
    throw Error("'" + path + "' was compiled for " + compiled_for + " and cannot run on " + device_name +
                "; use device " + (cuda_package ? "cuda" : "cpu") + " (or auto), or export the package on the "
                "device it will run on (or use the TorchScript .pt file)");
  if (!cuda_package) {
    const std::string isa = meta["cpu_capability"], cpu = at::get_cpu_capability();
    if (!isa.empty() && !cpu_supports(isa, cpu))
      throw Error("'" + path + "' was compiled for " + isa + " CPUs, this CPU supports " + cpu +
                  ": compile the package on the CPU family it runs on (or use the TorchScript .pt file)");
  }

  chunked_edges = meta["chunked_edges"].empty() ? -1 : parse_int(path, "chunked_edges", meta["chunked_edges"]);
  try {
    const c10::DeviceIndex index = device.is_cuda() ? device.index() : static_cast<c10::DeviceIndex>(-1);
    loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1, index);
    if (chunked_edges >= 0) layers = std::make_unique<detail::PackageLayers>(path, meta, device, dtype, cutoff, num_layers);
  } catch (const std::exception &e) {
    std::string why = trim(e.what());
    why = why.substr(0, why.find('\n'));
    throw Error("'" + path + "': the compiled package cannot be loaded here (" + why + "); re-export it on this "
                "machine with `equiformer-export CHECKPOINT.pt MODEL.pt2` (or use the TorchScript .pt file)");
  }
  layer_methods = layers != nullptr;
}

Model::~Model() = default;
Model::Model(Model &&) noexcept = default;
Model &Model::operator=(Model &&) noexcept = default;

const std::string &Model::path() const { return impl_->path; }
double Model::cutoff() const { return impl_->cutoff; }
int Model::num_layers() const { return impl_->num_layers; }
double Model::interaction_range() const { return impl_->interaction_range; }
const std::vector<std::string> &Model::species_symbols() const { return impl_->symbols; }
const std::vector<int> &Model::atomic_numbers() const { return impl_->numbers; }
const std::string &Model::length_unit() const { return impl_->length_unit; }
const std::string &Model::energy_unit() const { return impl_->energy_unit; }
const std::string &Model::dtype() const { return impl_->dtype_name; }
double Model::energy_offset() const { return impl_->energy_offset; }
double Model::min_distance() const { return impl_->min_distance; }
const std::string &Model::device() const { return impl_->device_name; }
bool Model::has_layer_methods() const { return impl_->layer_methods; }
bool Model::is_package() const { return impl_->package; }
int Model::committee_size() const { return impl_->committee_size; }
uint64_t Model::fingerprint() const { return impl_->fingerprint; }

std::string Model::metadata(const std::string &key) const
{
  auto it = impl_->meta.find(key);
  return it == impl_->meta.end() ? std::string() : it->second;
}

int Model::species_index(const std::string &symbol) const
{
  for (size_t k = 0; k < impl_->symbols.size(); ++k)
    if (impl_->symbols[k] == symbol) return static_cast<int>(k);
  return -1;
}

namespace {

// TorchScript errors put the interpreter banner first and the cause last
Error evaluation_error(const std::string &path, const std::string &device, const std::exception &e)
{
  std::string why = trim(e.what()), first = why.substr(0, why.find('\n'));
  std::string last = why.substr(why.find_last_of('\n') == std::string::npos ? 0 : why.find_last_of('\n') + 1);
  return Error("model evaluation failed (" + path + " on " + device + "): " + first +
               (last != first ? " ... " + last : std::string()));
}

}  // namespace

const std::vector<int64_t> &Model::layer_feature_sizes() const
{
  const Impl &m = *impl_;
  if (!m.feature_sizes.empty()) return m.feature_sizes;
  if (m.committee_size > 1)
    throw Error("'" + m.path + "' is a committee of " + std::to_string(m.committee_size) + " models, which has no "
                "per-layer methods (docs/model-format.md): evaluate it whole with compute() (LAMMPS: mode ghost or "
                "mode map)");
  if (m.package && !m.layers)
    throw Error("'" + m.path + "' is a compiled .pt2 package exported without its layer entries (--chunked-above -1), "
                "which per-layer exchange needs (docs/model-format.md); re-export it without that option (or use "
                "another mode)");
  if (!m.layer_methods)
    throw Error("'" + m.path + "' does not export the per-layer methods (docs/model-format.md) needed for per-layer "
                "exchange; re-export it with this package's equiformer-export (or use another mode)");
  try {
    // two atoms of the first species, half a cutoff apart
    torch::NoGradGuard no_grad;
    detail::LegacyExecutorScope legacy;  // the methods' first calls choose their executor
    auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(m.device);
    torch::Tensor species = torch::zeros({2}, i64);
    torch::Tensor index = torch::tensor({0, 1, 1, 0}, torch::TensorOptions().dtype(torch::kInt64)).view({2, 2}).to(m.device);
    const double h = 0.5 * m.cutoff;
    torch::Tensor vec = torch::tensor({h, 0.0, 0.0, -h, 0.0, 0.0}, torch::TensorOptions().dtype(torch::kFloat64))
                            .view({2, 3})
                            .to(m.device, m.dtype);
    std::vector<int64_t> sizes;
    if (m.package) {
      const detail::PackageLayers::Graph g = m.layers->prepare(index, vec, 2);
      torch::Tensor x;
      for (int s = 0; s <= m.num_layers; ++s) {
        x = m.layers->forward(s, species, x, g);
        sizes.push_back(x.numel() / 2);
      }
    } else if (m.feature_layers) {
      torch::IValue features = m.module.get_method("edge_features")({vec});
      torch::Tensor x = torch::zeros({0}, vec.options());
      for (int64_t s = 0; s <= m.num_layers; ++s) {
        x = m.module.get_method("layer")({s, species, x, index, features}).toTensor();
        sizes.push_back(x.numel() / 2);
      }
    } else {
      torch::Tensor x = m.module.get_method("embed")({species, index, vec}).toTensor();
      sizes.push_back(x.numel() / 2);
      for (int k = 0; k < m.num_layers; ++k) {
        x = m.module.get_method("block")({static_cast<int64_t>(k), x, index, vec}).toTensor();
        sizes.push_back(x.numel() / 2);
      }
    }
    m.feature_sizes = sizes;
  } catch (const Error &) {
    throw;
  } catch (const std::exception &e) {
    throw evaluation_error(m.path, m.device_name, e);
  }
  return m.feature_sizes;
}

// length of the shortest edge (infinity without edges)
static double shortest_edge(int64_t n_edges, const double *edge_vectors)
{
  double d2 = std::numeric_limits<double>::infinity();
  for (int64_t e = 0; e < n_edges; ++e) {
    const double *v = edge_vectors + 3 * e;
    d2 = std::min(d2, v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  }
  return std::sqrt(d2);
}

// every entry point's Result before evaluation: zeros of the right sizes, the shortest edge
static void start_result(int64_t n_atoms, int64_t n_edges, const double *edge_vectors, bool want_atom_virial,
                         Result &out)
{
  out.energy = 0.0;
  out.atom_energies.assign(n_atoms, 0.0);
  out.forces.assign(3 * n_atoms, 0.0);
  out.virial.fill(0.0);
  out.atom_virial.assign(want_atom_virial ? 9 * n_atoms : 0, 0.0);
  out.min_distance = shortest_edge(n_edges, edge_vectors);
}

// the same input checks for every entry point; `what` names the caller in messages
static void check_inputs(const char *what, int64_t nspecies, int64_t n_atoms, const int64_t *species,
                         int64_t n_edges, const int64_t *src, const int64_t *dst, int64_t n_local)
{
  const std::string name(what);
  if (n_atoms < 0 || n_edges < 0 || n_local < 0 || n_local > n_atoms)
    throw Error(name + ": need 0 <= n_local <= number of atoms");
  for (int64_t i = 0; i < n_atoms; ++i)
    if (species[i] < 0 || species[i] >= nspecies)
      throw Error(name + ": species index " + std::to_string(species[i]) + " of atom " + std::to_string(i) +
                  " is outside 0.." + std::to_string(nspecies - 1));
  for (int64_t e = 0; e < n_edges; ++e)
    if (src[e] < 0 || src[e] >= n_atoms || dst[e] < 0 || dst[e] >= n_atoms)
      throw Error(name + ": edge " + std::to_string(e) + " refers to an atom outside 0.." +
                  std::to_string(n_atoms - 1));
}

// The boundary rows of EXCHANGE (LayerExchange::boundary_rows) as a host index tensor in
// ROWS, checked; false when it names none (every row crosses).
static bool boundary_index(LayerExchange &exchange, int64_t n_local, torch::Tensor &rows)
{
  const std::vector<int64_t> *b = exchange.boundary_rows();
  if (!b) return false;
  int64_t prev = -1;
  for (int64_t r : *b) {
    if (r <= prev || r >= n_local)
      throw Error("the layer exchange's boundary rows must be strictly increasing local node indices (0.." +
                  std::to_string(n_local - 1) + "): got " + std::to_string(r) + " after " + std::to_string(prev));
    prev = r;
  }
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  rows = b->empty() ? torch::empty({0}, i64)
                    : torch::from_blob(const_cast<int64_t *>(b->data()), {static_cast<int64_t>(b->size())}, i64);
  return true;
}

torch::Tensor Model::Impl::exchange_forward(const torch::Tensor &y, int s, int64_t n_local,
                                          const std::vector<int64_t> &width, LayerExchange &exchange) const
{
  const int64_t n = y.dim() > 0 ? y.size(0) : 0, F = width[s];
  if (y.numel() != n * F)
    throw Error("the model's layer " + std::to_string(s) + " returned " + std::to_string(y.numel()) +
                " values for " + std::to_string(n) + " atoms, expected " + std::to_string(F) +
                " per atom (as on the probe)");
  torch::Tensor rows;
  if (!boundary_index(exchange, n_local, rows)) {
    // every row both ways; always a copy: y may be saved by its own autograd graph
    torch::Tensor h = y.detach().to(torch::kCPU, torch::kFloat64, false, true).contiguous();
    exchange.forward(h.data_ptr<double>(), n, F);
    exchange.rows_to_host += n;
    exchange.rows_to_device += n;
    return h.to(device, y.scalar_type()).requires_grad_(true);
  }
  // the boundary rows to the host (the other rows stay zero there), the ghost rows back;
  // the local rows of the result are y's own (a copy on the device)
  torch::Tensor h = torch::zeros({n, F}, torch::TensorOptions().dtype(torch::kFloat64));
  if (rows.numel() > 0)
    h.index_copy_(0, rows, y.detach().reshape({n, F}).index_select(0, rows.to(device)).to(torch::kCPU, torch::kFloat64));
  exchange.forward(h.data_ptr<double>(), n, F);
  torch::Tensor x = y.detach().clone(torch::MemoryFormat::Contiguous);
  if (n > n_local) x.view({n, F}).slice(0, n_local, n).copy_(h.slice(0, n_local, n));
  exchange.rows_to_host += rows.numel();
  exchange.rows_to_device += n - n_local;
  return x.requires_grad_(true);
}

torch::Tensor Model::Impl::exchange_reverse(const torch::Tensor &g, const torch::Tensor &y, int s, int64_t n_local,
                                          const std::vector<int64_t> &width, LayerExchange &exchange) const
{
  const int64_t n = y.size(0), F = width[s];
  torch::Tensor rows;
  if (!boundary_index(exchange, n_local, rows)) {
    torch::Tensor h = g.defined() ? g.detach().to(torch::kCPU, torch::kFloat64, false, true).contiguous()
                                  : torch::zeros({n * F}, torch::TensorOptions().dtype(torch::kFloat64));
    exchange.reverse(h.data_ptr<double>(), n, F);
    exchange.rows_to_host += g.defined() ? n : 0;
    exchange.rows_to_device += n;
    return h.to(device, y.scalar_type()).reshape(y.sizes());
  }
  // the ghost rows to the host (the local rows zero there), the boundary rows' increments
  // back, added in double precision as on the host (the same numbers as the full copies)
  torch::Tensor h = torch::zeros({n, F}, torch::TensorOptions().dtype(torch::kFloat64));
  const torch::Tensor g2 = g.defined() ? g.detach().reshape({n, F}) : torch::Tensor();
  if (g2.defined() && n > n_local) {
    h.slice(0, n_local, n).copy_(g2.slice(0, n_local, n));
    exchange.rows_to_host += n - n_local;
  }
  exchange.reverse(h.data_ptr<double>(), n, F);
  torch::Tensor r = g2.defined() ? g2.to(device, y.scalar_type(), false, true)
                                 : torch::zeros({n, F}, torch::TensorOptions().dtype(y.scalar_type()).device(device));
  if (n > n_local) r.slice(0, n_local, n).zero_();
  if (rows.numel() > 0) {
    const torch::Tensor idx = rows.to(device);
    const torch::Tensor sum = r.index_select(0, idx).to(torch::kFloat64) + h.index_select(0, rows).to(device);
    r.index_copy_(0, idx, sum.to(y.scalar_type()));
  }
  exchange.rows_to_device += rows.numel();
  return r.reshape(y.sizes());
}

// Current exports: edge features once; layer s = 0 (embedding), 1..L (blocks), L + 1
// (readout) on them. Small graphs keep each layer's graph and differentiate it with respect
// to its input and the features; large graphs run the layers by chunks without a graph and
// take the model's chunked vector-Jacobian products (layer_vjp, edge_features_vjp).
Model::Impl::Layered Model::Impl::layered_by_features(const torch::Tensor &species, const torch::Tensor &index,
                                                      const torch::Tensor &vec, int64_t n_local,
                                                      const std::vector<int64_t> &width, LayerExchange &exchange,
                                                      bool chunked) const
{
  const int L = num_layers;
  torch::jit::Method layer = module.get_method(chunked ? "layer_by_chunks" : "layer");
  torch::jit::Method vjp = module.get_method("layer_vjp");
  // grad mode on: the chunked vector-Jacobian products differentiate inside the model
  torch::AutoGradMode grad_on(true);
  torch::Tensor vec_leaf = vec.detach().requires_grad_(!chunked);
  std::vector<torch::Tensor> features = module.get_method("edge_features")({vec_leaf}).toTensorVector();
  std::vector<torch::Tensor> leaves;
  for (const auto &f : features) leaves.push_back(chunked ? f : f.detach().requires_grad_(true));
  const c10::List<torch::Tensor> leaf_list(leaves);
  const torch::Tensor none = torch::zeros({0}, vec.options());

  // forward: y[s] = layer s, x[s] = y[s] after the exchange (the input of layer s + 1)
  std::vector<torch::Tensor> y(L + 1), x(L + 1);
  for (int s = 0; s <= L; ++s) {
    y[s] = layer({static_cast<int64_t>(s), species, s > 0 ? x[s - 1] : none, index, leaf_list}).toTensor();
    x[s] = exchange_forward(y[s], s, n_local, width, exchange);
  }
  torch::Tensor e_atoms = layer({static_cast<int64_t>(L + 1), species, x[L], index, leaf_list}).toTensor();
  if (e_atoms.numel() != species.size(0)) throw Error("the model's readout returned outputs of an unexpected shape");

  // backward: d(local energy)/d(input of layer s), the features' gradients summed on the way
  std::vector<torch::Tensor> grad_features;
  for (const auto &f : features) grad_features.push_back(torch::zeros_like(f));
  auto backward = [&](int s, const torch::Tensor &out, const torch::Tensor &grad_out) -> torch::Tensor {
    const torch::Tensor &input = s > 0 ? x[s - 1] : none;
    if (chunked) {
      std::vector<torch::Tensor> r =
          vjp({static_cast<int64_t>(s), species, input.detach(), grad_out, index, leaf_list}).toTensorVector();
      for (size_t i = 0; i < grad_features.size(); ++i) grad_features[i].add_(r[i + 1]);
      return r[0];
    }
    std::vector<torch::Tensor> wrt;
    if (s > 0) wrt.push_back(input);
    wrt.insert(wrt.end(), leaves.begin(), leaves.end());
    std::vector<torch::Tensor> g = torch::autograd::grad({out}, wrt, {grad_out}, /*retain_graph=*/false,
                                                         /*create_graph=*/false, /*allow_unused=*/true);
    const size_t first = s > 0 ? 1 : 0;
    for (size_t i = 0; i < grad_features.size(); ++i)
      if (g[first + i].defined()) grad_features[i].add_(g[first + i]);
    return s > 0 ? g[0] : torch::Tensor();
  };
  torch::Tensor seed = torch::zeros_like(e_atoms);
  seed.slice(0, 0, n_local).fill_(1.0);
  torch::Tensor g = backward(L + 1, e_atoms, seed);
  for (int s = L; s >= 0; --s) {
    g = backward(s, y[s], exchange_reverse(g, y[s], s, n_local, width, exchange));
    y[s] = torch::Tensor();  // this layer's graph is no longer needed
  }

  // the features' gradient, taken to the edge vectors once
  torch::Tensor gvec;
  if (chunked) {
    gvec = module.get_method("edge_features_vjp")({vec, c10::List<torch::Tensor>(grad_features)}).toTensor();
  } else {
    std::vector<torch::Tensor> outs, seeds;
    for (size_t i = 0; i < features.size(); ++i)
      if (features[i].requires_grad()) {
        outs.push_back(features[i]);
        seeds.push_back(grad_features[i]);
      }
    gvec = outs.empty() ? torch::zeros_like(vec)
                        : torch::autograd::grad(outs, {vec_leaf}, seeds, false, false, true)[0];
    if (!gvec.defined()) gvec = torch::zeros_like(vec);
  }
  return {e_atoms.detach(), gvec};
}

// Files exported before the feature protocol, and simple models (tests): embed / block /
// readout on the edge vectors, each differentiated with respect to its input and the edge
// vectors; large graphs recompute each layer whole just before its backward pass.
Model::Impl::Layered Model::Impl::layered_by_vectors(const torch::Tensor &species, const torch::Tensor &index,
                                                     const torch::Tensor &vec, int64_t n_local,
                                                     const std::vector<int64_t> &width, LayerExchange &exchange,
                                                     bool chunked) const
{
  const int L = num_layers;
  torch::jit::Method embed = module.get_method("embed");
  torch::jit::Method block = module.get_method("block");
  torch::AutoGradMode grad_on(true);
  torch::Tensor t_vec = vec.detach().requires_grad_(true);
  std::vector<torch::Tensor> y(L + 1), x(L + 1);
  auto layer_call = [&](int s) {
    if (s == 0) return embed({species, index, t_vec}).toTensor();
    return block({static_cast<int64_t>(s - 1), x[s - 1], index, t_vec}).toTensor();
  };
  {
    torch::AutoGradMode graphs(!chunked);
    for (int s = 0; s <= L; ++s) {
      y[s] = layer_call(s);
      x[s] = exchange_forward(y[s], s, n_local, width, exchange);
    }
  }
  torch::Tensor e_atoms = module.get_method("readout")({species, x[L], index, t_vec}).toTensor();
  if (e_atoms.numel() != species.size(0)) throw Error("the model's readout returned outputs of an unexpected shape");
  torch::Tensor energy = e_atoms.reshape({species.size(0)}).slice(0, 0, n_local).sum();

  torch::Tensor gvec = torch::zeros_like(vec, torch::TensorOptions().dtype(torch::kFloat64));
  auto backward = [&](const torch::Tensor &out_t, const torch::Tensor &grad_out, const torch::Tensor *input) {
    if (!out_t.requires_grad()) return torch::Tensor();
    std::vector<torch::Tensor> inputs;
    if (input) inputs.push_back(*input);
    inputs.push_back(t_vec);
    std::vector<torch::Tensor> grad_outputs;
    if (grad_out.defined()) grad_outputs.push_back(grad_out);
    auto g = torch::autograd::grad({out_t}, inputs, grad_outputs, /*retain_graph=*/false,
                                   /*create_graph=*/false, /*allow_unused=*/true);
    if (g.back().defined()) gvec.add_(g.back().to(torch::kFloat64));
    return input ? g.front() : torch::Tensor();
  };
  torch::Tensor g = backward(energy, torch::Tensor(), &x[L]);
  for (int s = L; s >= 0; --s) {
    torch::Tensor gy = exchange_reverse(g, y[s], s, n_local, width, exchange);
    if (chunked) y[s] = layer_call(s);
    g = backward(y[s], gy, s > 0 ? &x[s - 1] : nullptr);
    y[s] = torch::Tensor();
  }
  return {e_atoms.detach(), gvec};
}

// A compiled package's layer entries, always by chunks of centres (package_layers.h): the
// layers of layered_by_features with the exchange between them.
Model::Impl::Layered Model::Impl::layered_by_package(const torch::Tensor &species, const torch::Tensor &index,
                                                     const torch::Tensor &vec, int64_t n_local,
                                                     const std::vector<int64_t> &width, LayerExchange &exchange) const
{
  torch::NoGradGuard no_grad;
  const int L = num_layers;
  const detail::PackageLayers::Graph g = layers->prepare(index, vec, species.size(0));
  std::vector<torch::Tensor> x(L + 1);  // layer s's output after the exchange (the input of layer s + 1)
  for (int s = 0; s <= L; ++s)
    x[s] = exchange_forward(layers->forward(s, species, s > 0 ? x[s - 1] : torch::Tensor(), g), s, n_local, width,
                            exchange).detach();
  torch::Tensor e_atoms = layers->forward(L + 1, species, x[L], g);
  torch::Tensor seed = torch::zeros_like(e_atoms);
  seed.slice(0, 0, n_local).fill_(1.0);
  std::vector<torch::Tensor> grad_features = layers->zero_feature_grads(g);
  torch::Tensor grad = layers->vjp(L + 1, species, x[L], seed, g, grad_features);
  for (int s = L; s >= 0; --s) {
    const torch::Tensor gy = exchange_reverse(grad, x[s], s, n_local, width, exchange);
    grad = layers->vjp(s, species, s > 0 ? x[s - 1] : torch::Tensor(), gy, g, grad_features);
  }
  return {e_atoms, layers->features_vjp(g, grad_features)};
}

// Forces and virials from d energy / d edge vector, the C++ side's one definition (the
// Python one, equiformer/forces.py, is inside every exported model's forward).
// r_e = x_src - x_dst: d E / d x_src = g_e, d E / d x_dst = -g_e; F = -dE/dx;
// virial -sum_e r_e (x) g_e, each edge term split half on its source, half on its centre.
// OUT's forces and virials must be zero on entry.
// OUT's forces, virial and atom virial from d E / d edge vector GVEC [3 E] (host arrays), by the
// one definition of the assembly (detail::assemble_from_edge_gradient)
static void edge_gradient_to_forces(int64_t n_atoms, int64_t n_edges, const int64_t *src, const int64_t *dst,
                                    const double *edge_vectors, const double *gvec, bool want_atom_virial,
                                    Result &out)
{
  torch::NoGradGuard no_grad;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64), i64 = torch::TensorOptions().dtype(torch::kInt64);
  const detail::EdgeAssembly a = detail::assemble_from_edge_gradient(
      torch::from_blob(const_cast<int64_t *>(src), {n_edges}, i64),
      torch::from_blob(const_cast<int64_t *>(dst), {n_edges}, i64),
      torch::from_blob(const_cast<double *>(edge_vectors), {n_edges, 3}, f64),
      torch::from_blob(const_cast<double *>(gvec), {n_edges, 3}, f64), n_atoms, true, want_atom_virial);
  const double *f = a.forces.data_ptr<double>(), *v = a.virial.contiguous().data_ptr<double>();
  std::copy(f, f + 3 * n_atoms, out.forces.begin());
  std::copy(v, v + 9, out.virial.begin());
  if (want_atom_virial) {
    const double *av = a.atom_virial.data_ptr<double>();
    std::copy(av, av + 9 * n_atoms, out.atom_virial.begin());
  }
}

// Number of nodes and edges appended to every package call (an isolated dimer of species 0,
// half a cutoff apart, one edge each way): AOTInductor's shape checks need at least two of
// each. Python pads the same way (equiformer/export/aoti.py: pad_graph).
constexpr int64_t kPadNodes = 2, kPadEdges = 2;

void Model::Impl::run_package(int64_t n_atoms, const int64_t *species, int64_t n_edges, const int64_t *src,
                              const int64_t *dst, const double *edge_vectors, int64_t n_local, Result &out,
                              std::vector<double> &gvec) const
{
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor t_species, t_index, t_vec;
    input_tensors(n_atoms, species, n_edges, src, dst, edge_vectors, t_species, t_index, t_vec);
    const std::pair<torch::Tensor, torch::Tensor> r = package_forward(t_species, t_index, t_vec, n_local);
    torch::Tensor ae = r.first.to(torch::kCPU, torch::kFloat64).contiguous();
    torch::Tensor gv = r.second.to(torch::kCPU, torch::kFloat64).contiguous();
    std::copy(ae.data_ptr<double>(), ae.data_ptr<double>() + n_atoms, out.atom_energies.begin());
    double energy = 0.0;
    for (int64_t i = 0; i < n_local; ++i) energy += out.atom_energies[i];
    out.energy = energy;
    gvec.assign(gv.data_ptr<double>(), gv.data_ptr<double>() + 3 * n_edges);
  } catch (const Error &) {
    throw;
  } catch (const std::exception &e) {
    throw evaluation_error(path, device_name, e);
  }
}

// Every package call gets an isolated dimer of species 0 appended (nodes n, n + 1, half a
// cutoff apart, one edge each way); the outputs are returned without it.
std::pair<torch::Tensor, torch::Tensor> Model::Impl::package_forward(const torch::Tensor &species,
                                                                     const torch::Tensor &index,
                                                                     const torch::Tensor &vec, int64_t n_local) const
{
  torch::NoGradGuard no_grad;
  const int64_t n_atoms = species.size(0), n_edges = index.size(1);
  if (layers && n_edges > chunked_edges) return layers->energy_gradient(species, index, vec.to(dtype), n_local);
  const int64_t n = n_atoms + kPadNodes, e = n_edges + kPadEdges;
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor pad_index = torch::tensor({n_atoms, n_atoms + 1, n_atoms + 1, n_atoms}, i64).view({2, 2}).to(device);
  torch::Tensor pad_vec = torch::tensor({0.5 * cutoff, 0.0, 0.0, -0.5 * cutoff, 0.0, 0.0},
                                        torch::TensorOptions().dtype(torch::kFloat64))
                              .view({2, 3})
                              .to(device, dtype);
  std::vector<torch::Tensor> inputs{torch::cat({species, torch::zeros({kPadNodes}, i64.device(device))}),
                                    torch::cat({index, pad_index}, 1), torch::cat({vec.to(dtype), pad_vec}, 0),
                                    torch::tensor(n_local, i64).to(device)};
  std::vector<torch::Tensor> outputs = loader->run(inputs);
  if (outputs.size() != 2 || outputs[0].numel() != n || outputs[1].numel() != 3 * e)
    throw Error("the compiled package returned outputs of unexpected shapes (expected atom energies [" +
                std::to_string(n) + "] and an edge gradient [" + std::to_string(e) + ", 3])");
  return {outputs[0].reshape({n}).slice(0, 0, n_atoms), outputs[1].reshape({e, 3}).slice(0, 0, n_edges)};
}

void Model::compute_layered(int64_t n_atoms, const int64_t *species, int64_t n_edges, const int64_t *src,
                            const int64_t *dst, const double *edge_vectors, int64_t n_local, bool want_atom_virial,
                            LayerExchange &exchange, Result &out) const
{
  const Impl &m = *impl_;
  detail::LegacyExecutorScope legacy;  // every per-layer method call below
  check_inputs("compute_layered", static_cast<int64_t>(m.symbols.size()), n_atoms, species, n_edges, src, dst, n_local);
  const std::vector<int64_t> &width = layer_feature_sizes();
  const int L = m.num_layers;

  start_result(n_atoms, n_edges, edge_vectors, want_atom_virial, out);

  // Nothing to evaluate here: still take part in every exchange (the other ranks need it).
  if (n_local == 0) {
    std::vector<double> buf;
    for (int s = 0; s <= L; ++s) {
      buf.assign(static_cast<size_t>(n_atoms * width[s]), 0.0);
      exchange.forward(buf.data(), n_atoms, width[s]);
    }
    for (int s = L; s >= 0; --s) {
      buf.assign(static_cast<size_t>(n_atoms * width[s]), 0.0);
      exchange.reverse(buf.data(), n_atoms, width[s]);
    }
    return;
  }

  std::vector<double> gvec_host;
  try {
    torch::Tensor t_species, t_index, t_vec;
    m.input_tensors(n_atoms, species, n_edges, src, dst, edge_vectors, t_species, t_index, t_vec);
    // large graphs (above the model's own threshold, docs/model-format.md): no layer keeps its
    // graph; the backward recomputes each layer, by chunks where the model provides them
    const bool chunked = m.chunked_edges >= 0 && n_edges > m.chunked_edges;
    Model::Impl::Layered r =
        m.package         ? m.layered_by_package(t_species, t_index, t_vec, n_local, width, exchange)
        : m.feature_layers ? m.layered_by_features(t_species, t_index, t_vec, n_local, width, exchange, chunked)
                           : m.layered_by_vectors(t_species, t_index, t_vec, n_local, width, exchange, chunked);
    torch::NoGradGuard no_grad;
    torch::Tensor ae = r.atom_energies.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    out.energy = ae.slice(0, 0, n_local).sum().item<double>();
    std::copy(ae.data_ptr<double>(), ae.data_ptr<double>() + n_atoms, out.atom_energies.begin());
    torch::Tensor gv = r.edge_gradient.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    gvec_host.assign(gv.data_ptr<double>(), gv.data_ptr<double>() + 3 * n_edges);
  } catch (const Error &) {
    throw;
  } catch (const std::exception &e) {
    throw evaluation_error(m.path, m.device_name, e);
  }

  edge_gradient_to_forces(n_atoms, n_edges, src, dst, edge_vectors, gvec_host.data(), want_atom_virial, out);
}

void Model::set_num_threads(int n)
{
  if (n > 0 && n != at::get_num_threads()) at::set_num_threads(n);
}
int Model::num_threads() { return at::get_num_threads(); }

bool Model::cuda_available() { return torch::cuda::is_available(); }
int Model::cuda_device_count() { return static_cast<int>(torch::cuda::device_count()); }

Result Model::compute(const std::vector<int64_t> &species, const std::vector<int64_t> &src,
                      const std::vector<int64_t> &dst, const std::vector<double> &edge_vectors,
                      int64_t n_local, bool want_atom_virial) const
{
  if (src.size() != dst.size() || edge_vectors.size() != 3 * src.size())
    throw Error("compute: src, dst and edge_vectors (3 per edge) have inconsistent lengths");
  Result out;
  compute(static_cast<int64_t>(species.size()), species.data(), static_cast<int64_t>(src.size()), src.data(),
          dst.data(), edge_vectors.data(), n_local, want_atom_virial, out);
  return out;
}

void Model::compute(int64_t n_atoms, const int64_t *species, int64_t n_edges, const int64_t *src,
                    const int64_t *dst, const double *edge_vectors, int64_t n_local, bool want_atom_virial,
                    Result &out) const
{
  const Impl &m = *impl_;
  check_inputs("compute", static_cast<int64_t>(m.symbols.size()), n_atoms, species, n_edges, src, dst, n_local);

  start_result(n_atoms, n_edges, edge_vectors, want_atom_virial, out);
  const int64_t K = m.committee_size > 1 ? m.committee_size : 0;  // no member outputs for a single model
  out.member_energies.assign(K, 0.0);
  out.member_atom_energies.assign(K * n_atoms, 0.0);
  out.member_forces.assign(K * 3 * n_atoms, 0.0);
  out.member_virials.assign(K * 9, 0.0);
  // No local atom: the local energy is an empty sum, all its derivatives vanish.
  if (n_local == 0) return;
  if (m.package) {
    std::vector<double> gvec;
    m.run_package(n_atoms, species, n_edges, src, dst, edge_vectors, n_local, out, gvec);
    edge_gradient_to_forces(n_atoms, n_edges, src, dst, edge_vectors, gvec.data(), want_atom_virial, out);
    return;
  }

  try {
    torch::Tensor t_species, t_index, t_vec;
    m.input_tensors(n_atoms, species, n_edges, src, dst, edge_vectors, t_species, t_index, t_vec);

    c10::impl::GenericDict result{c10::AnyType::get(), c10::AnyType::get()};
    {
      // The model differentiates itself (torch.autograd.grad inside forward): grad mode
      // must be on whatever the caller set.
      torch::AutoGradMode grad_on(true);
      detail::LegacyExecutorScope legacy;
      result = m.module.forward({t_species, t_index, t_vec, n_local}).toGenericDict();
    }
    torch::NoGradGuard no_grad;
    auto fetch = [&](const char *key) -> torch::Tensor {
      auto it = result.find(std::string(key));
      if (it == result.end()) throw Error(std::string("the model output lacks '") + key + "'");
      return it->value().toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
    };
    out.energy = fetch("energy").item<double>();
    torch::Tensor ae = fetch("atom_energies");
    torch::Tensor f = fetch("forces");
    torch::Tensor v = fetch("virial");
    if (ae.numel() != n_atoms || f.numel() != 3 * n_atoms || v.numel() != 9)
      throw Error("the model returned outputs of unexpected shapes");
    std::copy(ae.data_ptr<double>(), ae.data_ptr<double>() + n_atoms, out.atom_energies.begin());
    std::copy(f.data_ptr<double>(), f.data_ptr<double>() + 3 * n_atoms, out.forces.begin());
    std::copy(v.data_ptr<double>(), v.data_ptr<double>() + 9, out.virial.begin());
    if (want_atom_virial) {
      torch::Tensor av = fetch("atom_virial");
      if (av.numel() != 9 * n_atoms) throw Error("the model returned atom_virial of an unexpected shape");
      std::copy(av.data_ptr<double>(), av.data_ptr<double>() + 9 * n_atoms, out.atom_virial.begin());
    }
    if (K > 0) {
      auto member = [&](const char *key, int64_t per_member, std::vector<double> &dest) {
        torch::Tensor t = fetch(key);
        if (t.numel() != K * per_member)
          throw Error(std::string("the committee returned '") + key + "' of an unexpected shape (" +
                      std::to_string(t.numel()) + " values, expected " + std::to_string(K) + " members x " +
                      std::to_string(per_member) + ")");
        std::copy(t.data_ptr<double>(), t.data_ptr<double>() + K * per_member, dest.begin());
      };
      member("member_energies", 1, out.member_energies);
      member("member_atom_energies", n_atoms, out.member_atom_energies);
      member("member_forces", 3 * n_atoms, out.member_forces);
      member("member_virials", 9, out.member_virials);
    }
  } catch (const Error &) {
    throw;
  } catch (const std::exception &e) {
    // TorchScript errors put the interpreter banner first and the cause last
    std::string why = trim(e.what()), first = why.substr(0, why.find('\n'));
    std::string last = why.substr(why.find_last_of('\n') == std::string::npos ? 0 : why.find_last_of('\n') + 1);
    throw Error("model evaluation failed (" + m.path + " on " + m.device_name + "): " + first +
                (last != first ? " ... " + last : std::string()));
  }
}

// ---- the device API's access to Model::Impl (cpp/src/device_api.h)

namespace detail {

torch::jit::Module &ImplAccess::module(const Model &model) { return model.impl_->module; }
torch::Device ImplAccess::device(const Model &model) { return model.impl_->device; }
torch::ScalarType ImplAccess::dtype(const Model &model) { return model.impl_->dtype; }
bool ImplAccess::is_package(const Model &model) { return model.impl_->package; }

std::pair<torch::Tensor, torch::Tensor> ImplAccess::run_package(const Model &model, const torch::Tensor &species,
                                                                const torch::Tensor &index,
                                                                const torch::Tensor &vectors, int64_t n_local)
{
  return model.impl_->package_forward(species, index, vectors, n_local);
}

}  // namespace detail

}  // namespace equiformer
