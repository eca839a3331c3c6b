// The layer entries of a compiled package (.pt2; python/equiformer/export/aoti_layers.py):
// the model cut at its layers and at chunks of centre atoms, each piece and its
// vector-Jacobian product compiled as its own function. The runtime drives them for graphs
// above the package's chunked_edges (memory of one chunk of edges) and for per-layer exchange
// (LAMMPS mode layer), in the order the Python driver (export/aoti_schedule.py) uses.
// Internal to the runtime (not installed).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace equiformer::detail {

// Chunk c holds centres nodes[c]..nodes[c+1]-1 and their edges edges[c]..edges[c+1]-1.
struct Chunks {
  std::vector<int64_t> nodes, edges;
};

// Chunks of consecutive centres with about CHUNK_EDGES edges each (more only where one centre
// has more); SORTED_DST: the edges' centres, sorted. schedule.py's centre_chunks.
Chunks centre_chunks(const torch::Tensor &sorted_dst, int64_t n_nodes, int64_t chunk_edges);

class PackageLayers {
 public:
  // PATH's entries for a model of NUM_LAYERS blocks; META: the package's metadata (block_kinds,
  // readout_edges, edge_chunk). Throws std::runtime_error when an entry or weight is missing.
  PackageLayers(const std::string &path, const std::unordered_map<std::string, std::string> &meta,
                torch::Device device, torch::ScalarType dtype, double cutoff, int num_layers);
  ~PackageLayers();

  // One evaluation's graph: the edges sorted by centre, their chunks and edge features.
  struct Graph {
    torch::Tensor order, src, dst, vec;  // sorted: src = index[0][order], ...
    Chunks chunks;
    std::vector<torch::Tensor> features;  // as_list layout, sorted edges
    int64_t n_nodes = 0;
  };
  Graph prepare(const torch::Tensor &index, const torch::Tensor &vec, int64_t n_nodes) const;

  // Layer s (0 embedding, 1..L blocks, L + 1 readout: energies [N] float64) on input X (layer
  // s - 1's output; ignored for s = 0).
  torch::Tensor forward(int s, const torch::Tensor &species, const torch::Tensor &x, const Graph &g) const;
  // d/dX of layer s from d/d(its output) GRAD_Y; adds the features' gradients to GRAD_FEATURES
  // (`zero_feature_grads` layout). Undefined for s = 0.
  torch::Tensor vjp(int s, const torch::Tensor &species, const torch::Tensor &x, const torch::Tensor &grad_y,
                    const Graph &g, std::vector<torch::Tensor> &grad_features) const;
  std::vector<torch::Tensor> zero_feature_grads(const Graph &g) const;
  // the features' gradients taken to the edge vectors, in the caller's edge order [E, 3]
  torch::Tensor features_vjp(const Graph &g, const std::vector<torch::Tensor> &grad_features) const;

  // Atom energies [N] float64 and d(energy of atoms 0..n_local-1)/d(edge vectors) [E, 3].
  std::pair<torch::Tensor, torch::Tensor> energy_gradient(const torch::Tensor &species, const torch::Tensor &index,
                                                          const torch::Tensor &vec, int64_t n_local) const;

 private:
  // chunk c's centres a..b-1 and edges ea..eb-1
  struct Span {
    int64_t a, b, ea, eb;
    int64_t nodes() const { return b - a; }
    int64_t edges() const { return eb - ea; }
  };
  static Span span(const Graph &g, size_t c);
  std::vector<torch::Tensor> run(const std::string &entry, const std::vector<torch::Tensor> &inputs) const;
  // the inputs of embed_fwd for chunk c (embed_vjp: the same, then the output's gradient)
  std::vector<torch::Tensor> embed_inputs(const torch::Tensor &species, const Graph &g, size_t c) const;
  // block k's per-atom attention inputs (source side, centre side) of all nodes
  std::pair<torch::Tensor, torch::Tensor> attention_sides(int k, const torch::Tensor &x, const Graph &g) const;
  // the inputs of block k's chunk entry for chunk c (its VJP: the same, then the output's gradient)
  std::vector<torch::Tensor> block_inputs(int k, const torch::Tensor &x,
                                          const std::pair<torch::Tensor, torch::Tensor> &sides, const Graph &g,
                                          size_t c) const;
  std::vector<torch::Tensor> chunk_features(const Graph &g, int64_t ea, int64_t eb) const;
  torch::Tensor block_forward(int k, const torch::Tensor &x, const Graph &g) const;
  torch::Tensor block_vjp(int k, const torch::Tensor &x, const torch::Tensor &grad_y, const Graph &g,
                          std::vector<torch::Tensor> &grad_features) const;
  std::vector<torch::Tensor> readout_inputs(const torch::Tensor &species, const torch::Tensor &x,
                                            const Graph &g) const;

  std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> entries_;
  std::vector<std::vector<torch::Tensor>> weights_;  // per block, in the entries' order
  std::vector<int> kinds_;                           // per block: which block entries it uses
  bool readout_edges_ = false;
  int64_t edge_chunk_ = 2048;
  torch::Device device_;
  torch::Tensor pad_vectors_;                 // the padding edges' vectors [2, 3]
  std::vector<torch::Tensor> pad_features_;   // their features
};

}  // namespace equiformer::detail
