// Tests of the device-generic tensor API (cpp/src/device_api.h) on the CPU: the neighbour search
// against the host cell list (equiformer::CellList), the device evaluation against
// Model::compute, and the OpenMM layout helpers on a fake CUDA-platform layout.
// Usage: test_device_api DIR  (DIR written by make_models.py: pair64.pt, pair32.pt, mp.pt);
// EQUIFORMER_TEST_PT2=PACKAGE.pt2 adds a compiled float64 package
#include "device_api.h"
#include "package_layers.h"

#include "equiformer/neighbors.h"
#include "checks.h"
#include "equiformer/runtime.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using equiformer_test::check;

struct Edge {
  int64_t dst, src;
  double v[3];
};

// order by centre, neighbour, then vector (components equal within 1e-6 count as equal)
bool edge_less(const Edge &a, const Edge &b)
{
  if (a.dst != b.dst) return a.dst < b.dst;
  if (a.src != b.src) return a.src < b.src;
  for (int c = 0; c < 3; ++c)
    if (std::fabs(a.v[c] - b.v[c]) > 1e-6) return a.v[c] < b.v[c];
  return false;
}

std::vector<Edge> host_edges(const equiformer::NeighborList &list)
{
  std::vector<Edge> out(list.size());
  for (size_t e = 0; e < list.size(); ++e) {
    out[e].dst = list.dst[e];
    out[e].src = list.src[e];
    for (int c = 0; c < 3; ++c) out[e].v[c] = list.vectors[3 * e + c];
  }
  std::sort(out.begin(), out.end(), edge_less);
  return out;
}

std::vector<Edge> device_edges(const equiformer::device::Edges &edges)
{
  torch::Tensor src = edges.src.cpu().contiguous(), dst = edges.dst.cpu().contiguous();
  torch::Tensor vec = edges.vectors.to(torch::kCPU, torch::kFloat64).contiguous();
  std::vector<Edge> out(src.numel());
  for (size_t e = 0; e < out.size(); ++e) {
    out[e].dst = dst.data_ptr<int64_t>()[e];
    out[e].src = src.data_ptr<int64_t>()[e];
    for (int c = 0; c < 3; ++c) out[e].v[c] = vec.data_ptr<double>()[3 * e + c];
  }
  std::sort(out.begin(), out.end(), edge_less);
  return out;
}

// the host list of the same edges, for Model::compute
equiformer::NeighborList to_host(const equiformer::device::Edges &edges)
{
  equiformer::NeighborList list;
  torch::Tensor src = edges.src.cpu().contiguous(), dst = edges.dst.cpu().contiguous();
  torch::Tensor vec = edges.vectors.to(torch::kCPU, torch::kFloat64).contiguous();
  list.src.assign(src.data_ptr<int64_t>(), src.data_ptr<int64_t>() + src.numel());
  list.dst.assign(dst.data_ptr<int64_t>(), dst.data_ptr<int64_t>() + dst.numel());
  list.vectors.assign(vec.data_ptr<double>(), vec.data_ptr<double>() + vec.numel());
  return list;
}

torch::Tensor as_tensor(const std::vector<double> &v, int64_t rows, int64_t cols)
{
  return torch::tensor(v, torch::TensorOptions().dtype(torch::kFloat64)).view({rows, cols});
}

// random positions: fractional coordinates in [lo, hi) of BOX (or of a cube of side `side`)
std::vector<double> random_positions(std::mt19937 &rng, int n, const std::vector<double> &box, double side,
                                     double lo = 0.0, double hi = 1.0)
{
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> pos(3 * n);
  for (int i = 0; i < n; ++i) {
    double s[3] = {u(rng), u(rng), u(rng)};
    for (int c = 0; c < 3; ++c)
      pos[3 * i + c] = box.empty() ? side * s[c] : s[0] * box[c] + s[1] * box[3 + c] + s[2] * box[6 + c];
  }
  return pos;
}

void neighbor_case(const std::string &name, const std::vector<double> &pos, const std::vector<double> &box,
                   double cutoff, int64_t max_candidates = int64_t(1) << 22)
{
  const int n = static_cast<int>(pos.size() / 3);
  equiformer::CellList cells;
  equiformer::NeighborList list;
  cells.build(n, pos.data(), box.empty() ? nullptr : box.data(), cutoff, list);
  torch::Tensor b = box.empty() ? torch::Tensor() : as_tensor(box, 3, 3);
  equiformer::device::Edges edges = equiformer::device::neighbors(as_tensor(pos, n, 3), b, cutoff, max_candidates);
  std::vector<Edge> want = host_edges(list), got = device_edges(edges);
  bool same = want.size() == got.size();
  double worst = 0.0;
  for (size_t e = 0; same && e < want.size(); ++e) {
    same = want[e].dst == got[e].dst && want[e].src == got[e].src;
    for (int c = 0; c < 3; ++c) worst = std::max(worst, std::fabs(want[e].v[c] - got[e].v[c]));
  }
  if (!same || worst > 1e-9)
    std::cerr << "  " << name << ": " << got.size() << " edges, host cell list " << want.size()
              << ", largest vector difference " << worst << "\n";
  check(same && worst <= 1e-9 && !want.empty(), "neighbours == CellList: " + name);
}

void test_neighbors()
{
  std::mt19937 rng(11);
  // open boundaries: a molecule, a dilute cloud (many cells), a cloud in small chunks
  neighbor_case("molecule", random_positions(rng, 21, {}, 4.0), {}, 3.0);
  neighbor_case("dilute open", random_positions(rng, 400, {}, 60.0), {}, 5.0);
  neighbor_case("open, chunked", random_positions(rng, 300, {}, 14.0), {}, 3.0, 500);
  // periodic: skewed triclinic cell narrower than two cutoffs (several images of a neighbour)
  const std::vector<double> small = {4.2, 0.0, 0.0, 0.9, 4.0, 0.0, -0.6, 0.7, 4.4};
  neighbor_case("small triclinic", random_positions(rng, 8, small, 0.0), small, 3.0);
  neighbor_case("small triclinic, 60 atoms", random_positions(rng, 60, small, 0.0), small, 3.9);
  // a width exactly-ish at the cutoff, positions outside the cell
  const std::vector<double> reduced = {7.0, 0.0, 0.0, 3.1, 6.5, 0.0, -2.9, 2.2, 6.1};
  neighbor_case("reduced triclinic, outside", random_positions(rng, 150, reduced, 0.0, -1.5, 2.5), reduced, 2.5);
  const std::vector<double> cubic = {12.0, 0, 0, 0, 12.0, 0, 0, 0, 12.0};
  neighbor_case("cubic", random_positions(rng, 500, cubic, 0.0), cubic, 3.0);
  neighbor_case("cubic, chunked", random_positions(rng, 500, cubic, 0.0), cubic, 3.0, 1000);
  neighbor_case("cubic, one cell", random_positions(rng, 30, cubic, 0.0), cubic, 11.5);

  // refusals: the host messages
  auto refused = [](const std::vector<double> &pos, const std::vector<double> &box, const std::string &needle) {
    try {
      equiformer::device::neighbors(as_tensor(pos, static_cast<int64_t>(pos.size() / 3), 3),
                                    box.empty() ? torch::Tensor() : as_tensor(box, 3, 3), 3.0);
    } catch (const std::invalid_argument &e) {
      const bool ok = std::string(e.what()).find(needle) != std::string::npos;
      if (!ok) std::cerr << "  message: " << e.what() << "\n";
      return ok;
    }
    return false;
  };
  std::vector<double> pos = random_positions(rng, 5, cubic, 0.0);
  check(refused(pos, {2.5, 0, 0, 0, 12, 0, 0, 0, 12}, "periodic box too small"), "narrow box refused");
  pos[7] = std::nan("");
  check(refused(pos, cubic, "atom 2 has a non-finite coordinate"), "NaN refused (periodic)");
  check(refused(pos, {}, "atom 2 has a non-finite coordinate"), "NaN refused (open)");
  // no atoms, no edges
  equiformer::device::Edges none =
      equiformer::device::neighbors(torch::zeros({0, 3}, torch::kFloat64), torch::Tensor(), 3.0);
  check(none.src.numel() == 0 && none.vectors.size(0) == 0, "no atoms: no edges");
}

void compare_evaluation(const std::string &path, double tol)
{
  equiformer::Model model(path, "cpu");
  const std::string file = path.substr(path.find_last_of('/') + 1);
  std::mt19937 rng(5);
  const int n = 24;
  const double cutoff = model.cutoff();
  const double side = 2.2 * cutoff;
  const std::vector<double> box = {side, 0, 0, 0.3 * cutoff, side, 0, -0.2 * cutoff, 0.1 * cutoff, side};
  const std::vector<double> pos = random_positions(rng, n, box, 0.0);
  std::vector<int64_t> species(n);
  for (int i = 0; i < n; ++i) species[i] = i % static_cast<int>(model.species_symbols().size());
  equiformer::device::Edges edges = equiformer::device::neighbors(as_tensor(pos, n, 3), as_tensor(box, 3, 3), cutoff);
  equiformer::NeighborList list = to_host(edges);
  torch::Tensor t_species = torch::tensor(species, torch::TensorOptions().dtype(torch::kInt64));
  for (int n_local : {n, n - 5}) {
    equiformer::Result want = model.compute(species, list.src, list.dst, list.vectors, n_local);
    equiformer::device::Evaluation got = equiformer::device::evaluate(model, t_species, edges, n_local);
    const std::string what = file + " (n_local " + std::to_string(n_local) + ")";
    check(std::fabs(got.energy - want.energy) <= tol * (1.0 + std::fabs(want.energy)), "energy == compute: " + what);
    torch::Tensor f = got.forces.to(torch::kCPU, torch::kFloat64).contiguous();
    double worst = 0.0, scale = 0.0;
    for (int k = 0; k < 3 * n; ++k) {
      worst = std::max(worst, std::fabs(f.data_ptr<double>()[k] - want.forces[k]));
      scale = std::max(scale, std::fabs(want.forces[k]));
    }
    if (worst > tol * (1.0 + scale))
      std::cerr << "  " << what << ": energy " << got.energy << " vs " << want.energy << ", largest force difference "
                << worst << "\n";
    check(f.size(0) == n && worst <= tol * (1.0 + scale), "forces == compute: " + what);
    check(std::fabs(got.min_distance - want.min_distance) <= 1e-12 * want.min_distance,
          "min distance == compute: " + what);
  }
  equiformer::device::Evaluation none = equiformer::device::evaluate(model, t_species, edges, 0);
  check(none.energy == 0.0 && none.forces.abs().sum().item<double>() == 0.0, "n_local 0: nothing: " + file);
}

// a package's chunks of centres: the same cuts as schedule.py's centre_chunks (tests/unit/test_schedule.py)
void test_centre_chunks()
{
  using equiformer::detail::centre_chunks;
  const torch::Tensor dst = torch::tensor({0, 0, 0, 2, 2, 3, 5, 5, 5, 5, 5, 5}, torch::kInt64);
  equiformer::detail::Chunks c = centre_chunks(dst, 7, 4);
  check(c.nodes == std::vector<int64_t>{0, 2, 5, 7} && c.edges == std::vector<int64_t>{0, 3, 6, 12},
        "centre_chunks: chunks of about 4 edges, whole centres");
  c = centre_chunks(dst, 7, 100);
  check(c.nodes == std::vector<int64_t>{0, 7} && c.edges == std::vector<int64_t>{0, 12}, "centre_chunks: one chunk");
  c = centre_chunks(dst.slice(0, 0, 0), 3, 4);
  check(c.nodes == std::vector<int64_t>{0, 3} && c.edges == std::vector<int64_t>{0, 0}, "centre_chunks: no edge");
}

void test_layout()
{
  // a fake OpenMM CUDA layout: 35 atoms in 40 slots, shuffled; 12 ML particles
  const int num_atoms = 35, padded = 40;
  std::mt19937 rng(3);
  std::vector<int> atom_index(num_atoms);
  std::iota(atom_index.begin(), atom_index.end(), 0);
  std::shuffle(atom_index.begin(), atom_index.end(), rng);
  std::vector<int64_t> particles(num_atoms);
  std::iota(particles.begin(), particles.end(), 0);
  std::shuffle(particles.begin(), particles.end(), rng);
  particles.resize(12);
  std::uniform_real_distribution<double> u(-3.0, 3.0);
  std::vector<double> x(3 * num_atoms);  // System positions
  for (double &v : x) v = u(rng);
  const double scale = 10.0;

  torch::Tensor idx = torch::tensor(std::vector<int32_t>(atom_index.begin(), atom_index.end()),
                                    torch::TensorOptions().dtype(torch::kInt32));
  torch::Tensor parts = torch::tensor(particles, torch::TensorOptions().dtype(torch::kInt64));
  for (auto kind : {torch::kFloat64, torch::kFloat32}) {
    const bool mixed = kind == torch::kFloat32;
    torch::Tensor posq = torch::full({padded, 4}, 7.0, torch::TensorOptions().dtype(torch::kFloat64));
    torch::Tensor corr = torch::zeros({padded, 4}, torch::TensorOptions().dtype(torch::kFloat32));
    for (int s = 0; s < num_atoms; ++s)
      for (int c = 0; c < 3; ++c) {
        const double v = x[3 * atom_index[s] + c];
        posq[s][c] = mixed ? static_cast<double>(static_cast<float>(v)) : v;
        corr[s][c] = static_cast<float>(v - static_cast<double>(static_cast<float>(v)));
      }
    posq = posq.to(kind);
    torch::Tensor got = equiformer::device::gather_positions(posq, mixed ? corr : torch::Tensor(), idx, parts, scale);
    double worst = 0.0;
    for (size_t k = 0; k < particles.size(); ++k)
      for (int c = 0; c < 3; ++c)
        worst = std::max(worst, std::fabs(got[k][c].item<double>() - scale * x[3 * particles[k] + c]));
    // mixed precision: float high part + float low part, about 1e-14 relative
    check(got.size(0) == 12 && got.scalar_type() == torch::kFloat64 && worst <= (mixed ? 1e-12 : 0.0),
          std::string("gather_positions ") + (mixed ? "(mixed precision)" : "(double)"));
  }

  // scatter: fixed-point forces added into the right slots, nothing else touched
  torch::Tensor buffer = torch::randint(-1000000, 1000000, {3 * padded}, torch::TensorOptions().dtype(torch::kInt64));
  torch::Tensor before = buffer.clone();
  torch::Tensor forces = torch::randn({12, 3}, torch::TensorOptions().dtype(torch::kFloat64));
  equiformer::device::scatter_forces(buffer, idx, parts, forces, 0.5);
  bool ok = true;
  std::vector<int> slot_of(num_atoms);
  for (int s = 0; s < num_atoms; ++s) slot_of[atom_index[s]] = s;
  std::vector<bool> touched(3 * padded, false);
  for (size_t k = 0; k < particles.size(); ++k)
    for (int c = 0; c < 3; ++c) {
      const int64_t at = slot_of[particles[k]] + c * padded;
      touched[at] = true;
      const int64_t want = before[at].item<int64_t>() +
                           static_cast<int64_t>(forces[k][c].item<double>() * 0.5 * 4294967296.0);
      ok = ok && buffer[at].item<int64_t>() == want;
    }
  for (int k = 0; k < 3 * padded; ++k)
    if (!touched[k]) ok = ok && buffer[k].item<int64_t>() == before[k].item<int64_t>();
  check(ok, "scatter_forces: fixed point into the particles' slots only");
  // round trip: the forces back from the fixed-point increments
  torch::Tensor slots = equiformer::device::particle_slots(idx, parts);
  torch::Tensor back = (buffer - before).view({3, padded}).t().index_select(0, slots).to(torch::kFloat64) /
                       (0.5 * 4294967296.0);
  check((back - forces).abs().max().item<double>() < 1e-9, "scatter_forces round trip");
}

}  // namespace

int main(int argc, char **argv)
{
  if (argc != 2) {
    std::cerr << "usage: test_device_api DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  try {
    test_neighbors();
    test_centre_chunks();
    compare_evaluation(dir + "/pair64.pt", 1e-10);
    compare_evaluation(dir + "/mp.pt", 1e-10);
    compare_evaluation(dir + "/pair32.pt", 1e-5);
    // a compiled float64 package (.pt2, e.g. the test suite's build/test-cache/compiled-pair-*/tiny.pt2):
    // its edge gradient assembled on the device == the host assembly of Model::compute
    if (const char *pt2 = std::getenv("EQUIFORMER_TEST_PT2")) compare_evaluation(pt2, 1e-10);
    test_layout();
  } catch (const std::exception &e) {
    std::cerr << "FAIL: unexpected exception: " << e.what() << "\n";
    return 1;
  }
  return equiformer_test::report();
}
