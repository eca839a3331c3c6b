// The layer entries of a compiled package, driven chunk by chunk (package_layers.h).
#include "package_layers.h"

#include "archive.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace equiformer::detail {

namespace {

// Rows appended to every dynamic size of an entry call (aoti_layers.py: PAD_ROWS): zero node
// rows, and edges into the padded centres with the padding vectors' features.
constexpr int64_t kPadRows = 2;
// the package's own entries beside AOTInductor's (aoti_layers.py: LAYER_INDEX, LAYER_WEIGHTS)
constexpr const char *kLayerIndex = "/equiformer/layer_weights.txt";
constexpr const char *kLayerWeights = "/equiformer/layer_weights.bin";

torch::Tensor padded(const torch::Tensor &t)
{
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes[0] = kPadRows;
  return torch::cat({t, torch::zeros(sizes, t.options())});
}

// a chunk's local centre index, with the padding edges into the padding centres n, n + 1
torch::Tensor centres(const torch::Tensor &dst_local, int64_t n)
{
  return torch::cat({dst_local, torch::arange(n, n + kPadRows, dst_local.options())});
}

torch::Tensor rows(const torch::Tensor &t, int64_t a, int64_t b) { return t.slice(0, a, b); }

// the `differentiable` features of the as_list layout: all but the constant degree-0 frame (index 3)
bool differentiable(size_t i, size_t n_features) { return i != 3 || n_features <= 3; }

std::string entry_path(const std::string &path, const char *suffix)
{
  for (const ArchiveEntry &e : archive_entries(path)) {
    const std::string s = suffix;
    if (e.name.size() > s.size() && e.name.compare(e.name.size() - s.size(), s.size(), s) == 0) return e.name;
  }
  throw std::runtime_error(std::string("the package has layer entries but no ") + (suffix + 1) +
                           "; re-export it with `equiformer-export CHECKPOINT.pt MODEL.pt2`");
}

torch::ScalarType weight_dtype(const std::string &name)
{
  if (name == "float32") return torch::kFloat32;
  if (name == "float64") return torch::kFloat64;
  if (name == "int64") return torch::kInt64;
  if (name == "int32") return torch::kInt32;
  if (name == "bool") return torch::kBool;
  throw std::runtime_error("the package's layer weights have an unknown dtype '" + name + "'");
}

}  // namespace

Chunks centre_chunks(const torch::Tensor &sorted_dst, int64_t n_nodes, int64_t chunk_edges)
{
  const torch::Tensor dst = sorted_dst.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t n_edges = dst.numel();
  std::vector<int64_t> ends(static_cast<size_t>(n_nodes), 0);  // edges of centres 0..i
  const int64_t *d = dst.data_ptr<int64_t>();
  for (int64_t e = 0; e < n_edges; ++e) ++ends[static_cast<size_t>(d[e])];
  for (size_t i = 1; i < ends.size(); ++i) ends[i] += ends[i - 1];
  const int64_t num_chunks = std::max<int64_t>(1, (n_edges + chunk_edges - 1) / chunk_edges);
  Chunks c;
  c.nodes.push_back(0);
  for (int64_t t = 1; t < num_chunks; ++t) {
    const int64_t cut = std::upper_bound(ends.begin(), ends.end(), t * chunk_edges) - ends.begin();
    if (cut != c.nodes.back()) c.nodes.push_back(cut);
  }
  if (n_nodes != c.nodes.back()) c.nodes.push_back(n_nodes);
  c.edges.push_back(0);
  for (size_t i = 1; i < c.nodes.size(); ++i) c.edges.push_back(ends[static_cast<size_t>(c.nodes[i] - 1)]);
  return c;
}

PackageLayers::PackageLayers(const std::string &path, const std::unordered_map<std::string, std::string> &meta,
                             torch::Device device, torch::ScalarType dtype, double cutoff, int num_layers)
    : device_(device)
{
  auto value = [&](const char *key) {
    auto it = meta.find(key);
    if (it == meta.end() || it->second.empty())
      throw std::runtime_error(std::string("the package has layer entries but no '") + key + "' metadata");
    return it->second;
  };
  std::istringstream kinds(value("block_kinds"));
  for (int k; kinds >> k;) kinds_.push_back(k);
  if (static_cast<int>(kinds_.size()) != num_layers)
    throw std::runtime_error("the package's block_kinds name " + std::to_string(kinds_.size()) +
                             " blocks, its num_layers says " + std::to_string(num_layers));
  readout_edges_ = value("readout_edges") == "1";
  edge_chunk_ = std::stoll(value("edge_chunk"));
  if (edge_chunk_ < 1) throw std::runtime_error("the package's edge_chunk must be at least 1");

  // the blocks' weights: one line per tensor (block, name, dtype, byte offset, shape)
  std::string index, blob;
  for (auto [suffix, out] : {std::pair<const char *, std::string *>{kLayerIndex, &index}, {kLayerWeights, &blob}}) {
    const std::string why = read_stored_entry(path, entry_path(path, suffix), *out);
    if (!why.empty()) throw std::runtime_error("the package's layer weights: " + why);
  }
  weights_.resize(kinds_.size());
  std::istringstream lines(index);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream f(line);
    size_t k, offset;
    std::string name, type;
    if (!(f >> k >> name >> type >> offset) || k >= weights_.size())
      throw std::runtime_error("the package's layer weight index has a malformed line '" + line + "'");
    std::vector<int64_t> shape;
    for (int64_t s; f >> s;) shape.push_back(s);
    const torch::ScalarType st = weight_dtype(type);
    int64_t count = 1;
    for (int64_t s : shape) count *= s;
    if (offset + count * torch::elementSize(st) > blob.size())
      throw std::runtime_error("the package's layer weight '" + name + "' lies outside the stored weights");
    weights_[k].push_back(torch::from_blob(blob.data() + offset, shape, torch::TensorOptions().dtype(st))
                              .to(device, false, true));
  }

  std::vector<std::string> names{"features_fwd", "features_vjp", "embed_fwd", "embed_vjp", "readout_fwd",
                                 "readout_vjp"};
  for (int t : kinds_)
    for (const char *part : {"_inputs_fwd", "_inputs_vjp", "_fwd", "_vjp"})
      names.push_back("block" + std::to_string(t) + part);
  const c10::DeviceIndex index_on = device.is_cuda() && device.has_index() ? device.index() : -1;
  for (const std::string &name : names)
    if (!entries_.count(name))
      entries_[name] = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, name, false, 1, index_on);

  const double h = 0.5 * cutoff;
  pad_vectors_ = torch::tensor({h, 0.0, 0.0, -h, 0.0, 0.0}, torch::TensorOptions().dtype(torch::kFloat64))
                     .view({kPadRows, 3})
                     .to(device, dtype);
  pad_features_ = run("features_fwd", {pad_vectors_});
}

PackageLayers::~PackageLayers() = default;

std::vector<torch::Tensor> PackageLayers::run(const std::string &entry, const std::vector<torch::Tensor> &inputs) const
{
  std::vector<torch::Tensor> in;
  in.reserve(inputs.size());
  for (const torch::Tensor &t : inputs) in.push_back(t.contiguous());
  return entries_.at(entry)->run(in);
}

std::vector<torch::Tensor> PackageLayers::chunk_features(const Graph &g, int64_t ea, int64_t eb) const
{
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < g.features.size(); ++i) out.push_back(torch::cat({rows(g.features[i], ea, eb), pad_features_[i]}));
  return out;
}

PackageLayers::Graph PackageLayers::prepare(const torch::Tensor &index, const torch::Tensor &vec, int64_t n_nodes) const
{
  Graph g;
  g.n_nodes = n_nodes;
  g.order = torch::argsort(index[1], /*stable=*/true);
  g.src = index[0].index_select(0, g.order);
  g.dst = index[1].index_select(0, g.order);
  g.vec = vec.index_select(0, g.order);
  g.chunks = centre_chunks(g.dst, n_nodes, edge_chunk_);
  std::vector<std::vector<torch::Tensor>> parts;
  for (size_t c = 0; c + 1 < g.chunks.edges.size(); ++c) {
    const int64_t ea = g.chunks.edges[c], eb = g.chunks.edges[c + 1];
    std::vector<torch::Tensor> out = run("features_fwd", {torch::cat({rows(g.vec, ea, eb), pad_vectors_})});
    if (parts.empty()) parts.resize(out.size());
    for (size_t i = 0; i < out.size(); ++i) parts[i].push_back(rows(out[i], 0, eb - ea));
  }
  if (parts.empty()) {  // no node: the features of no edge
    for (const torch::Tensor &p : pad_features_) g.features.push_back(rows(p, 0, 0));
    return g;
  }
  for (auto &p : parts) g.features.push_back(torch::cat(p));
  return g;
}

std::vector<torch::Tensor> PackageLayers::readout_inputs(const torch::Tensor &species, const torch::Tensor &x,
                                                         const Graph &g) const
{
  std::vector<torch::Tensor> in{padded(species), padded(x)};
  if (readout_edges_) {
    const int64_t n = g.n_nodes;
    const torch::Tensor pad = torch::arange(n, n + kPadRows, g.dst.options());
    in.push_back(torch::cat({g.src, pad.flip(0)}));
    in.push_back(torch::cat({g.dst, pad}));
    for (const torch::Tensor &f : chunk_features(g, 0, g.src.size(0))) in.push_back(f);
  }
  return in;
}

torch::Tensor PackageLayers::forward(int s, const torch::Tensor &species, const torch::Tensor &x, const Graph &g) const
{
  const int L = static_cast<int>(kinds_.size());
  if (s > L) return rows(run("readout_fwd", readout_inputs(species, x, g))[0], 0, g.n_nodes);
  if (s > 0) return block_forward(s - 1, x, g);
  std::vector<torch::Tensor> parts;
  for (size_t c = 0; c + 1 < g.chunks.nodes.size(); ++c)
    parts.push_back(rows(run("embed_fwd", embed_inputs(species, g, c))[0], 0, span(g, c).nodes()));
  return torch::cat(parts);
}

PackageLayers::Span PackageLayers::span(const Graph &g, size_t c)
{
  return {g.chunks.nodes[c], g.chunks.nodes[c + 1], g.chunks.edges[c], g.chunks.edges[c + 1]};
}

std::vector<torch::Tensor> PackageLayers::embed_inputs(const torch::Tensor &species, const Graph &g, size_t c) const
{
  const Span s = span(g, c);
  std::vector<torch::Tensor> in{padded(rows(species, s.a, s.b)), centres(rows(g.dst, s.ea, s.eb) - s.a, s.nodes())};
  for (const torch::Tensor &f : chunk_features(g, s.ea, s.eb)) in.push_back(f);
  return in;
}

std::pair<torch::Tensor, torch::Tensor> PackageLayers::attention_sides(int k, const torch::Tensor &x,
                                                                       const Graph &g) const
{
  std::vector<torch::Tensor> in(weights_[k]);
  in.push_back(padded(x));
  const std::vector<torch::Tensor> sides = run("block" + std::to_string(kinds_[k]) + "_inputs_fwd", in);
  return {rows(sides[0], 0, g.n_nodes), rows(sides[1], 0, g.n_nodes)};
}

std::vector<torch::Tensor> PackageLayers::block_inputs(int k, const torch::Tensor &x,
                                                       const std::pair<torch::Tensor, torch::Tensor> &sides,
                                                       const Graph &g, size_t c) const
{
  const Span s = span(g, c);
  std::vector<torch::Tensor> in(weights_[k]);
  in.insert(in.end(), {padded(rows(x, s.a, s.b)), padded(sides.first.index_select(0, rows(g.src, s.ea, s.eb))),
                       padded(rows(sides.second, s.a, s.b)), centres(rows(g.dst, s.ea, s.eb) - s.a, s.nodes())});
  for (const torch::Tensor &f : chunk_features(g, s.ea, s.eb)) in.push_back(f);
  return in;
}

torch::Tensor PackageLayers::block_forward(int k, const torch::Tensor &x, const Graph &g) const
{
  const auto sides = attention_sides(k, x, g);
  std::vector<torch::Tensor> parts;
  for (size_t c = 0; c + 1 < g.chunks.nodes.size(); ++c)
    parts.push_back(rows(run("block" + std::to_string(kinds_[k]) + "_fwd", block_inputs(k, x, sides, g, c))[0], 0,
                         span(g, c).nodes()));
  return torch::cat(parts);
}

std::vector<torch::Tensor> PackageLayers::zero_feature_grads(const Graph &g) const
{
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < g.features.size(); ++i)
    if (differentiable(i, g.features.size())) out.push_back(torch::zeros_like(g.features[i]));
  return out;
}

torch::Tensor PackageLayers::vjp(int s, const torch::Tensor &species, const torch::Tensor &x,
                                 const torch::Tensor &grad_y, const Graph &g,
                                 std::vector<torch::Tensor> &grad_features) const
{
  const int L = static_cast<int>(kinds_.size());
  if (s > L) {
    std::vector<torch::Tensor> in = readout_inputs(species, x, g);
    in.push_back(padded(grad_y.to(torch::kFloat64)));
    const std::vector<torch::Tensor> out = run("readout_vjp", in);
    if (readout_edges_)
      for (size_t i = 0; i < grad_features.size(); ++i) grad_features[i].add_(rows(out[1 + i], 0, g.src.size(0)));
    return rows(out[0], 0, g.n_nodes);
  }
  if (s > 0) return block_vjp(s - 1, x, grad_y, g, grad_features);
  for (size_t c = 0; c + 1 < g.chunks.nodes.size(); ++c) {
    const Span sp = span(g, c);
    std::vector<torch::Tensor> in = embed_inputs(species, g, c);
    in.push_back(padded(rows(grad_y, sp.a, sp.b)));
    const std::vector<torch::Tensor> out = run("embed_vjp", in);
    for (size_t j = 0; j < grad_features.size(); ++j)
      rows(grad_features[j], sp.ea, sp.eb).add_(rows(out[j], 0, sp.edges()));
  }
  return torch::Tensor();
}

torch::Tensor PackageLayers::block_vjp(int k, const torch::Tensor &x, const torch::Tensor &grad_y, const Graph &g,
                                       std::vector<torch::Tensor> &grad_features) const
{
  const std::string name = "block" + std::to_string(kinds_[k]);
  const auto sides = attention_sides(k, x, g);
  torch::Tensor grad_x = torch::zeros_like(x), grad_src = torch::zeros_like(sides.first),
                grad_dst = torch::zeros_like(sides.second);
  const torch::Tensor gy = grad_y.to(x.scalar_type());
  for (size_t c = 0; c + 1 < g.chunks.nodes.size(); ++c) {
    const Span s = span(g, c);
    std::vector<torch::Tensor> in = block_inputs(k, x, sides, g, c);
    in.push_back(padded(rows(gy, s.a, s.b)));
    const std::vector<torch::Tensor> out = run(name + "_vjp", in);
    rows(grad_x, s.a, s.b).add_(rows(out[0], 0, s.nodes()));
    grad_src.index_add_(0, rows(g.src, s.ea, s.eb), rows(out[1], 0, s.edges()));
    rows(grad_dst, s.a, s.b).add_(rows(out[2], 0, s.nodes()));
    for (size_t j = 0; j < grad_features.size(); ++j)
      rows(grad_features[j], s.ea, s.eb).add_(rows(out[3 + j], 0, s.edges()));
  }
  std::vector<torch::Tensor> through(weights_[k]);
  through.insert(through.end(), {padded(x), padded(grad_src), padded(grad_dst)});
  return grad_x + rows(run(name + "_inputs_vjp", through)[0], 0, g.n_nodes);
}

torch::Tensor PackageLayers::features_vjp(const Graph &g, const std::vector<torch::Tensor> &grad_features) const
{
  torch::Tensor grad = torch::zeros_like(g.vec);
  const std::vector<int64_t> &edges = g.chunks.edges;
  for (size_t c = 0; c + 1 < edges.size(); ++c) {
    const int64_t ea = edges[c], eb = edges[c + 1];
    std::vector<torch::Tensor> in{torch::cat({rows(g.vec, ea, eb), pad_vectors_})};
    for (const torch::Tensor &gf : grad_features) in.push_back(padded(rows(gf, ea, eb)));
    rows(grad, ea, eb).copy_(rows(run("features_vjp", in)[0], 0, eb - ea));
  }
  return torch::zeros_like(grad).index_copy_(0, g.order, grad);
}

std::pair<torch::Tensor, torch::Tensor> PackageLayers::energy_gradient(const torch::Tensor &species,
                                                                       const torch::Tensor &index,
                                                                       const torch::Tensor &vec, int64_t n_local) const
{
  torch::NoGradGuard no_grad;
  const int L = static_cast<int>(kinds_.size());
  const Graph g = prepare(index, vec, species.size(0));
  std::vector<torch::Tensor> x{forward(0, species, torch::Tensor(), g)};  // x[s]: layer s's output
  for (int s = 1; s <= L; ++s) x.push_back(forward(s, species, x.back(), g));
  const torch::Tensor energies = forward(L + 1, species, x[L], g);
  torch::Tensor grad = torch::zeros_like(energies);
  grad.slice(0, 0, n_local).fill_(1.0);
  std::vector<torch::Tensor> grad_features = zero_feature_grads(g);
  for (int s = L + 1; s >= 0; --s) grad = vjp(s, species, s > 0 ? x[s - 1] : torch::Tensor(), grad, g, grad_features);
  return {energies, features_vjp(g, grad_features)};
}

}  // namespace equiformer::detail
