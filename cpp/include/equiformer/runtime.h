// equiformer_runtime: load an exported Equiformer model (docs/model-format.md) and
// evaluate it from C++ without exposing libtorch in this header.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace equiformer {

namespace detail {
struct ImplAccess;  // the runtime's internal device API (cpp/src/device_api.h)
}

// Every failure of this library (bad file, bad metadata, unusable device, model error).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Outputs of one evaluation, always in double precision and in the model's units.
struct Result {
  double energy = 0.0;                 // sum of atom energies of the n_local local atoms
  std::vector<double> atom_energies;   // [N]
  std::vector<double> forces;          // [N*3], ghosts included
  std::array<double, 9> virial{};      // row-major 3x3, LAMMPS sign (sum r (x) f)
  std::vector<double> atom_virial;     // [N*9] row-major, empty unless asked for
  double min_distance = 0.0;           // shortest edge given (model length unit; inf: none)
  // A committee (Model::committee_size() K > 1): the members' own outputs, whose means are the
  // fields above; empty for a single model. Each member's energy of the local atoms plus its
  // offset relative to Model::energy_offset() (adding that gives the member's total).
  std::vector<double> member_energies;       // [K]
  std::vector<double> member_atom_energies;  // [K*N]
  std::vector<double> member_forces;         // [K*N*3], ghosts included (before any ghost summation)
  std::vector<double> member_virials;        // [K*9] row-major, LAMMPS sign
};

// Communication between the layers of a per-layer evaluation (Model::compute_layered).
// Rows are graph nodes, F values per row (row-major, double precision whatever the model
// dtype); nodes 0..n_local-1 are owned here, the others are copies of atoms owned elsewhere.
// Every rank of a decomposition must make the same sequence of calls (the runtime makes
// them even when it has nothing to evaluate), so implementations may communicate.
class LayerExchange {
 public:
  virtual ~LayerExchange() = default;
  // Overwrite the rows of the non-local nodes of X[n_nodes*F] with their owners' rows.
  virtual void forward(double *x, int64_t n_nodes, int64_t F) = 0;
  // Adjoint of forward: add the rows of the non-local nodes of G[n_nodes*F] onto their
  // owners' rows (wherever they live), then zero those rows.
  virtual void reverse(double *g, int64_t n_nodes, int64_t F) = 0;
  // The local nodes (strictly increasing, each in 0..n_local-1) whose rows forward() may
  // read and reverse() may add to: the owners of some non-local node on any rank ("boundary
  // rows"). Then only those rows of a layer's output cross from the model's device to the
  // host before forward(), and only the non-local rows come back after it; the other local
  // rows of X are zero on entry. Likewise reverse() gets only the non-local rows of G (the
  // local rows zero) and only the boundary rows' increments go back. nullptr (the default):
  // every row crosses both ways. Read at every exchange; the pointer must stay valid during
  // compute_layered(). A set missing a row that is read gives wrong results.
  virtual const std::vector<int64_t> *boundary_rows() { return nullptr; }

  // Rows of node features the runtime copied between its device and the host for this
  // exchange (over all calls; on the CPU device the same host-side copies are counted).
  int64_t rows_to_host = 0, rows_to_device = 0;
};

// An exported model (docs/model-format.md): a TorchScript file or a compiled AOTInductor
// package (.pt2, recognised by its contents), called whole (compute) or layer by layer with an
// exchange of node features between layers (compute_layered). Opaque handles keep libtorch
// out of this header.
class Model {
 public:
  // Loads PATH on DEVICE: "cpu", "cuda", "cuda:K" or "auto" (first GPU when libtorch
  // sees one, else the CPU; for a .pt2 package the device kind it was compiled for).
  // Throws equiformer::Error with a message naming the fix.
  explicit Model(const std::string &path, const std::string &device = "cpu");
  ~Model();
  Model(Model &&) noexcept;
  Model &operator=(Model &&) noexcept;
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  const std::string &path() const;
  double cutoff() const;                  // in length_unit()
  int num_layers() const;
  double interaction_range() const;       // in length_unit()
  const std::vector<std::string> &species_symbols() const;
  const std::vector<int> &atomic_numbers() const;
  const std::string &length_unit() const; // "Angstrom" or "nm"
  const std::string &energy_unit() const; // "eV", "kcal/mol" or "kJ/mol"
  const std::string &dtype() const;       // "float32" or "float64"
  double energy_offset() const;           // per-structure constant, see the format doc
  // Closest approach of two atoms the model is meant for (model length unit): engines warn
  // when Result::min_distance falls below it (the model has no repulsion built in).
  double min_distance() const;
  const std::string &device() const;      // the device actually used, e.g. "cpu", "cuda:0"
  bool has_layer_methods() const;         // exports the per-layer methods (either protocol of the format doc)
  // Members of a committee file (metadata committee_size; 1: a single model). A committee's
  // forward gives the members' mean and their own outputs (Result::member_*), and it has no
  // per-layer methods: compute_layered() and layer_feature_sizes() refuse it.
  int committee_size() const;
  // A compiled AOTInductor package (.pt2) rather than a TorchScript file: compute() takes its
  // one-graph entry, or above its chunked_edges its layer entries by chunks, which also serve
  // compute_layered() (has_layer_methods() is false for a package exported without them).
  bool is_package() const;
  // Digest of the file's contents (entry names, sizes, checksums): ranks of a parallel run
  // compare it to be sure they loaded the same model.
  uint64_t fingerprint() const;
  // Any metadata entry as text ("" when absent).
  std::string metadata(const std::string &key) const;

  // Index of SYMBOL in species_symbols(), or -1.
  int species_index(const std::string &symbol) const;

  // One evaluation. species[N] are species indices; edge k goes from src[k] (neighbour)
  // to dst[k] (centre); edge_vectors[3k..3k+2] = x[src]-x[dst] (+ periodic shift) in the
  // model's length unit. Atoms 0..n_local-1 are local.
  Result compute(const std::vector<int64_t> &species, const std::vector<int64_t> &src,
                 const std::vector<int64_t> &dst, const std::vector<double> &edge_vectors,
                 int64_t n_local, bool want_atom_virial = false) const;
  // The same on raw arrays (no copies on the caller's side); OUT is overwritten.
  void compute(int64_t n_atoms, const int64_t *species, int64_t n_edges, const int64_t *src,
               const int64_t *dst, const double *edge_vectors, int64_t n_local,
               bool want_atom_virial, Result &out) const;

  // Widths of the node features that the layer methods produce: [embed, block 0, ...,
  // block L-1] (F values per node; found once by evaluating them on a two-atom probe).
  // Throws when the model lacks the layer methods.
  const std::vector<int64_t> &layer_feature_sizes() const;

  // The same outputs as compute(), evaluated layer by layer with an exchange of node
  // features between layers (per-layer domain decomposition, docs/lammps.md):
  //   features = edge_features; x = layer(0); exchange.forward(x);
  //   for k: x = layer(k, x); exchange.forward(x); atom energies = layer(L + 1, x)
  // (files exported before: embed / block / readout, each computing its own edge features)
  // and the backward pass in reverse order with exchange.reverse() on the gradients of
  // each layer's input. Only the rows of local nodes (0..n_local-1) of each layer output
  // need to be right, so the graph needs edges into local centres only; forces and
  // virials come from the accumulated d energy / d edge vector of all layers, with the
  // global energy (sum over all ranks) differentiated. Calls the exchange
  // 2 x (num_layers + 1) times, also when n_local == 0.
  void compute_layered(int64_t n_atoms, const int64_t *species, int64_t n_edges, const int64_t *src,
                       const int64_t *dst, const double *edge_vectors, int64_t n_local,
                       bool want_atom_virial, LayerExchange &exchange, Result &out) const;

  // libtorch's intra-op CPU threads for this process (e.g. LAMMPS' OpenMP threads per rank).
  static void set_num_threads(int n);
  static int num_threads();

  // Whether libtorch sees a CUDA device, and how many.
  static bool cuda_available();
  static int cuda_device_count();

 private:
  friend struct detail::ImplAccess;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Unit conversion factors (CODATA 2018 e and N_A, thermochemical calorie 4.184 J):
// multiply a quantity in FROM units by the factor to get TO units.
double energy_conversion(const std::string &from, const std::string &to);   // eV, kcal/mol, kJ/mol
double length_conversion(const std::string &from, const std::string &to);   // Angstrom, nm

}  // namespace equiformer
