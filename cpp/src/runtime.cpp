// Implementation of equiformer::Model over libtorch (TorchScript).
#include "equiformer/runtime.h"

#include "archive.h"

#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <ATen/Parallel.h>

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

const char *const kMetaKeys[] = {"format",        "format_version", "package_version",
                                 "cutoff",        "num_layers",     "interaction_range",
                                 "species_symbols", "atomic_numbers", "length_unit",
                                 "energy_unit",   "dtype",          "device",
                                 "energy_offset", "hyperparameters", "min_distance"};

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

double parse_double(const std::string &path, const std::string &key, const std::string &text)
{
  try {
    size_t pos = 0;
    double v = std::stod(text, &pos);
    if (trim(text.substr(pos)).empty()) return v;
  } catch (const std::exception &) {
  }
  throw Error(path + ": metadata '" + key + "' is not a number ('" + text +
              "'); the file is damaged or was not written by equiformer-export");
}

long parse_int(const std::string &path, const std::string &key, const std::string &text)
{
  try {
    size_t pos = 0;
    long v = std::stol(text, &pos);
    if (trim(text.substr(pos)).empty()) return v;
  } catch (const std::exception &) {
  }
  throw Error(path + ": metadata '" + key + "' is not an integer ('" + text +
              "'); the file is damaged or was not written by equiformer-export");
}

// TorchScript runs on its legacy graph executor (optimisation on, no profiling): the profiling
// executor re-optimises during the first calls and then runs these models 15-25% slower than
// eager PyTorch (measured, torch 2.9, CPU); the legacy one matches eager. The setting is
// process-wide (the Python side makes the same choice). EQUIFORMER_JIT_OPTIMIZE=0 turns the
// optimisation off for debugging (libtorch 2.9 then fails on scripted forwards that call
// methods in loops: "Expected Object but got None").
void configure_jit_once()
{
  static std::once_flag once;
  std::call_once(once, [] {
    torch::jit::getExecutorMode() = false;
    torch::jit::getProfilingMode() = false;
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
  std::vector<std::string> symbols;
  std::vector<int> numbers;
  std::string length_unit, energy_unit, dtype_name;
  bool layer_methods = false;
  uint64_t fingerprint = 0;
  int64_t layerwise_edges = -1;  // the model's threshold for recomputing layers (-1: never)
  mutable std::vector<int64_t> feature_sizes;  // layer_feature_sizes(), found on first use

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

  if (m.meta["format"] != kFormat)
    throw Error("'" + path + "' is a TorchScript file but not an exported Equiformer model (no 'format' = '" +
                kFormat + "' metadata); " + kHowToExport);
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
  m.interaction_range = m.meta["interaction_range"].empty()
                            ? m.cutoff * m.num_layers
                            : parse_double(path, "interaction_range", m.meta["interaction_range"]);
  m.energy_offset = m.meta["energy_offset"].empty() ? 0.0 : parse_double(path, "energy_offset", m.meta["energy_offset"]);
  if (m.module.hasattr("layerwise_edges") && m.module.attr("layerwise_edges").isInt())
    m.layerwise_edges = m.module.attr("layerwise_edges").toInt();
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

  m.module.eval();
  m.layer_methods = m.module.find_method("embed").has_value() && m.module.find_method("block").has_value() &&
                    m.module.find_method("readout").has_value();
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
  if (!m.layer_methods)
    throw Error("'" + m.path + "' does not export the layer methods embed / block / readout needed for per-layer "
                "exchange; re-export it with this package's equiformer-export (or use another mode)");
  try {
    // two atoms of the first species, half a cutoff apart
    torch::NoGradGuard no_grad;
    auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(m.device);
    torch::Tensor species = torch::zeros({2}, i64);
    torch::Tensor index = torch::tensor({0, 1, 1, 0}, torch::TensorOptions().dtype(torch::kInt64)).view({2, 2}).to(m.device);
    const double h = 0.5 * m.cutoff;
    torch::Tensor vec = torch::tensor({h, 0.0, 0.0, -h, 0.0, 0.0}, torch::TensorOptions().dtype(torch::kFloat64))
                            .view({2, 3})
                            .to(m.device, m.dtype);
    std::vector<int64_t> sizes;
    torch::Tensor x = m.module.get_method("embed")({species, index, vec}).toTensor();
    sizes.push_back(x.numel() / 2);
    for (int k = 0; k < m.num_layers; ++k) {
      x = m.module.get_method("block")({static_cast<int64_t>(k), x, index, vec}).toTensor();
      sizes.push_back(x.numel() / 2);
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

void Model::compute_layered(int64_t n_atoms, const int64_t *species, int64_t n_edges, const int64_t *src,
                            const int64_t *dst, const double *edge_vectors, int64_t n_local, bool want_atom_virial,
                            LayerExchange &exchange, Result &out) const
{
  const Impl &m = *impl_;
  check_inputs("compute_layered", static_cast<int64_t>(m.symbols.size()), n_atoms, species, n_edges, src, dst, n_local);
  const std::vector<int64_t> &width = layer_feature_sizes();
  const int L = m.num_layers;

  out.energy = 0.0;
  out.atom_energies.assign(n_atoms, 0.0);
  out.forces.assign(3 * n_atoms, 0.0);
  out.virial.fill(0.0);
  out.atom_virial.assign(want_atom_virial ? 9 * n_atoms : 0, 0.0);
  out.min_distance = shortest_edge(n_edges, edge_vectors);

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

    torch::AutoGradMode grad_on(true);
    t_vec.requires_grad_(true);
    torch::jit::Method embed = m.module.get_method("embed");
    torch::jit::Method block = m.module.get_method("block");
    torch::jit::Method readout = m.module.get_method("readout");

    // layer outputs y[s] (s = 0: embed, s = k+1: block k) and the inputs x[s] of the next
    // call: y[s] with the non-local rows replaced by the owners' (a fresh autograd leaf)
    std::vector<torch::Tensor> y(L + 1), x(L + 1);
    auto check_width = [&](const torch::Tensor &t, int s) {
      if (t.dim() < 1 || t.size(0) != n_atoms || t.numel() != n_atoms * width[s])
        throw Error("the model's layer " + std::to_string(s) + " returned " + std::to_string(t.numel()) +
                    " values for " + std::to_string(n_atoms) + " atoms, expected " + std::to_string(width[s]) +
                    " per atom (as on the probe)");
    };
    auto exchange_forward = [&](const torch::Tensor &t, int s) {
      check_width(t, s);
      // always a copy: t may be saved by its own autograd graph
      torch::Tensor h = t.detach().to(torch::kCPU, torch::kFloat64, false, true).contiguous();
      exchange.forward(h.data_ptr<double>(), n_atoms, width[s]);
      return h.to(m.device, t.scalar_type()).requires_grad_(true);
    };
    // y[s] of layer call s from its input (s = 0: embed, s = k+1: block k)
    auto layer_call = [&](int s) {
      if (s == 0) return embed({t_species, t_index, t_vec}).toTensor();
      return block({static_cast<int64_t>(s - 1), x[s - 1], t_index, t_vec}).toTensor();
    };
    // large graphs (the model's own threshold, see docs/model-format.md): keep only the layer
    // inputs, then recompute each layer's graph just before its backward pass
    const bool recompute = m.layerwise_edges >= 0 && n_edges > m.layerwise_edges;
    {
      torch::AutoGradMode graphs(!recompute);
      for (int s = 0; s <= L; ++s) {
        y[s] = layer_call(s);
        x[s] = exchange_forward(y[s], s);
      }
    }
    torch::Tensor e_atoms = readout({t_species, x[L], t_index, t_vec}).toTensor();
    if (e_atoms.numel() != n_atoms) throw Error("the model's readout returned outputs of an unexpected shape");
    torch::Tensor energy = e_atoms.reshape({n_atoms}).slice(0, 0, n_local).sum();

    // backward, layer by layer: d energy / d x[s] -> reverse exchange -> d energy / d y[s]
    torch::Tensor gvec = torch::zeros({n_edges, 3}, torch::TensorOptions().dtype(torch::kFloat64).device(m.device));
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
      torch::Tensor h = g.defined() ? g.detach().to(torch::kCPU, torch::kFloat64, false, true).contiguous()
                                    : torch::zeros({n_atoms * width[s]}, torch::TensorOptions().dtype(torch::kFloat64));
      exchange.reverse(h.data_ptr<double>(), n_atoms, width[s]);
      torch::Tensor gy = h.to(m.device, y[s].scalar_type()).reshape(y[s].sizes());
      if (recompute) y[s] = layer_call(s);
      g = backward(y[s], gy, s > 0 ? &x[s - 1] : nullptr);
      y[s] = torch::Tensor();  // this layer's graph is no longer needed
    }

    torch::NoGradGuard no_grad;
    out.energy = energy.detach().to(torch::kCPU, torch::kFloat64).item<double>();
    torch::Tensor ae = e_atoms.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    std::copy(ae.data_ptr<double>(), ae.data_ptr<double>() + n_atoms, out.atom_energies.begin());
    torch::Tensor gv = gvec.to(torch::kCPU).contiguous();
    gvec_host.assign(gv.data_ptr<double>(), gv.data_ptr<double>() + 3 * n_edges);
  } catch (const Error &) {
    throw;
  } catch (const std::exception &e) {
    throw evaluation_error(m.path, m.device_name, e);
  }

  // r_e = x_src - x_dst: d E / d x_src = g_e, d E / d x_dst = -g_e; F = -dE/dx;
  // virial -sum_e r_e (x) g_e, each edge term split half on its source, half on its centre
  for (int64_t e = 0; e < n_edges; ++e) {
    const double *ge = &gvec_host[3 * e];
    const double *re = &edge_vectors[3 * e];
    double *fs = &out.forces[3 * src[e]], *fd = &out.forces[3 * dst[e]];
    for (int a = 0; a < 3; ++a) {
      fs[a] -= ge[a];
      fd[a] += ge[a];
    }
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) {
        const double v = -re[a] * ge[b];
        out.virial[3 * a + b] += v;
        if (want_atom_virial) {
          out.atom_virial[9 * src[e] + 3 * a + b] += 0.5 * v;
          out.atom_virial[9 * dst[e] + 3 * a + b] += 0.5 * v;
        }
      }
  }
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

  out.energy = 0.0;
  out.atom_energies.assign(n_atoms, 0.0);
  out.forces.assign(3 * n_atoms, 0.0);
  out.virial.fill(0.0);
  out.atom_virial.assign(want_atom_virial ? 9 * n_atoms : 0, 0.0);
  out.min_distance = shortest_edge(n_edges, edge_vectors);
  // No local atom: the local energy is an empty sum, all its derivatives vanish.
  if (n_local == 0) return;

  try {
    torch::Tensor t_species, t_index, t_vec;
    m.input_tensors(n_atoms, species, n_edges, src, dst, edge_vectors, t_species, t_index, t_vec);

    c10::impl::GenericDict result{c10::AnyType::get(), c10::AnyType::get()};
    {
      // The model differentiates itself (torch.autograd.grad inside forward): grad mode
      // must be on whatever the caller set.
      torch::AutoGradMode grad_on(true);
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

}  // namespace equiformer
