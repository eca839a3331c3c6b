// Device-generic tensor API of the runtime (device_api.h): neighbour search, evaluation and the
// OpenMM layout helpers, written with ATen operations only so that the same code runs on the
// CPU (tests) and on a CUDA device (the OpenMM CUDA kernel).
#include "device_api.h"
#include "jit_scope.h"

#include "equiformer/neighbors.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace equiformer {
namespace device {

namespace {

// The centre cell and the 13 neighbouring cells with a lexicographically positive offset: every
// pair of cells at offset d is searched once (d or -d is in this half) and its edges mirrored.
torch::Tensor half_offsets(const torch::Device &dev)
{
  std::vector<int64_t> rows;
  bool positive = false;
  for (int a = -1; a <= 1; ++a)
    for (int b = -1; b <= 1; ++b)
      for (int c = -1; c <= 1; ++c) {
        if (a == 0 && b == 0 && c == 0) positive = true;  // rows from (0, 0, 0) on
        if (positive) rows.insert(rows.end(), {a, b, c});
      }
  return torch::tensor(rows, torch::TensorOptions().dtype(torch::kInt64)).view({14, 3}).to(dev);
}

void check_finite(const torch::Tensor &pos, bool all_finite)
{
  if (all_finite) return;
  torch::Tensor bad = (~torch::isfinite(pos).all(1)).nonzero();
  const int64_t atom = bad.numel() > 0 ? bad[0][0].item<int64_t>() : 0;
  throw std::invalid_argument("atom " + std::to_string(atom) +
                              " has a non-finite coordinate (the simulation has become unstable)");
}

std::string first_and_last_line(const std::string &text)
{
  const char *ws = " \t\r\n";
  const size_t b = text.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  const std::string why = text.substr(b, text.find_last_not_of(ws) - b + 1);
  const std::string first = why.substr(0, why.find('\n'));
  const size_t nl = why.find_last_of('\n');
  const std::string last = nl == std::string::npos ? why : why.substr(nl + 1);
  return first + (last != first ? " ... " + last : std::string());
}

}  // namespace

Edges neighbors(const torch::Tensor &positions, const torch::Tensor &box_in, double cutoff, int64_t max_candidates)
{
  if (!(cutoff > 0.0)) throw std::invalid_argument("the cutoff must be positive");
  if (positions.dim() != 2 || positions.size(1) != 3 || !positions.is_floating_point())
    throw std::invalid_argument("neighbors: positions must be a floating-point [N, 3] tensor");
  const torch::Device dev = positions.device();
  const auto real = positions.options();
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  const int64_t n = positions.size(0);
  Edges out;
  if (n == 0) {
    out.src = torch::empty({0}, i64);
    out.dst = torch::empty({0}, i64);
    out.vectors = torch::empty({0, 3}, real);
    return out;
  }
  torch::Tensor pos = positions.contiguous();

  // the box on the host: checked like the host cell list's; open boundaries get an
  // orthorhombic box around the atoms with 1.5 cutoffs of room, so that no image comes
  // within the cutoff of any atom
  double box[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  if (box_in.defined()) {
    torch::Tensor b = box_in.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    if (b.numel() != 9) throw std::invalid_argument("neighbors: the box must have 3 x 3 components");
    std::copy(b.data_ptr<double>(), b.data_ptr<double>() + 9, box);
    check_finite(pos, torch::isfinite(pos).all().item<bool>());  // one read of one flag
    check_box(box, cutoff);
  } else {
    // one read of six numbers: the extent (non-finite coordinates show up here too)
    torch::Tensor range = torch::stack({pos.amin(0), pos.amax(0)}).to(torch::kCPU, torch::kFloat64).contiguous();
    const double *r = range.data_ptr<double>();
    bool finite = true;
    for (int k = 0; k < 6; ++k) finite = finite && std::isfinite(r[k]);
    check_finite(pos, finite);
    for (int k = 0; k < 3; ++k) box[4 * k] = r[3 + k] - r[k] + 1.5 * cutoff;
    pos = pos - pos.amin(0, true);
  }

  // cells at least a cutoff thick across every lattice plane, at most about 2N of them
  const std::array<double, 3> widths = box_widths(box);
  std::array<int64_t, 3> counts{};
  for (int k = 0; k < 3; ++k) counts[k] = std::max<int64_t>(1, static_cast<int64_t>(std::floor(widths[k] / cutoff)));
  const int64_t max_cells = 2 * n + 27;
  while (counts[0] * counts[1] * counts[2] > max_cells && std::max({counts[0], counts[1], counts[2]}) > 1) {
    int64_t &largest = *std::max_element(counts.begin(), counts.end());
    largest = (largest + 1) / 2;
  }
  const int64_t num_cells = counts[0] * counts[1] * counts[2];
  // reciprocal vectors as columns: fractional coordinates = x . inverse
  auto cross = [](const double *u, const double *v, double *w) {
    w[0] = u[1] * v[2] - u[2] * v[1];
    w[1] = u[2] * v[0] - u[0] * v[2];
    w[2] = u[0] * v[1] - u[1] * v[0];
  };
  double bc[3], ca[3], ab[3], inverse[9];
  cross(box + 3, box + 6, bc);
  cross(box + 6, box + 0, ca);
  cross(box + 0, box + 3, ab);
  const double volume = box[0] * bc[0] + box[1] * bc[1] + box[2] * bc[2];
  for (int r = 0; r < 3; ++r) {
    inverse[3 * r + 0] = bc[r] / volume;
    inverse[3 * r + 1] = ca[r] / volume;
    inverse[3 * r + 2] = ab[r] / volume;
  }
  auto host64 = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor B = torch::from_blob(box, {3, 3}, host64).to(dev, real.dtype());
  torch::Tensor Binv = torch::from_blob(inverse, {3, 3}, host64).to(dev, real.dtype());
  torch::Tensor ncell = torch::tensor({counts[0], counts[1], counts[2]}, torch::TensorOptions().dtype(torch::kInt64)).to(dev);

  // wrapped positions and their cells
  torch::Tensor frac = torch::matmul(pos, Binv);
  frac = frac - torch::floor(frac);
  torch::Tensor wrapped = torch::matmul(frac, B);
  torch::Tensor cell = torch::floor(frac * ncell.to(real.dtype())).to(torch::kInt64);
  cell = torch::minimum(torch::clamp_min(cell, 0), ncell - 1);
  torch::Tensor cell_id = (cell.select(1, 0) * counts[1] + cell.select(1, 1)) * counts[2] + cell.select(1, 2);
  torch::Tensor order = torch::argsort(cell_id);
  torch::Tensor per_cell = torch::bincount(cell_id, {}, num_cells);
  torch::Tensor starts = torch::cumsum(per_cell, 0) - per_cell;

  // the 14 cells searched from each atom's cell in the unwrapped grid: stored cell and
  // lattice shift of the neighbour's image (distinct (cell, shift) = distinct images)
  torch::Tensor offsets = half_offsets(dev);
  const int64_t nof = offsets.size(0);
  torch::Tensor unwrapped = cell.unsqueeze(1) + offsets.unsqueeze(0);  // [N, 14, 3]
  torch::Tensor stored = torch::remainder(unwrapped, ncell);
  torch::Tensor shifts = torch::div(unwrapped - stored, ncell, "floor");
  torch::Tensor stored_id =
      ((stored.select(2, 0) * counts[1] + stored.select(2, 1)) * counts[2] + stored.select(2, 2)).reshape(-1);
  // x_i - shift . B per (i, offset): the edge vector is x_j - that
  torch::Tensor origin = (wrapped.unsqueeze(1) - torch::matmul(shifts.to(real.dtype()), B)).reshape({-1, 3});
  torch::Tensor block_len = per_cell.index_select(0, stored_id);  // [N * 14]
  torch::Tensor block_start = starts.index_select(0, stored_id);

  // centre atoms in chunks: at most max_candidates candidate pairs at a time (a few hundred
  // bytes each), so memory stays bounded whatever the number of atoms
  const int64_t fullest = per_cell.max().item<int64_t>();
  const int64_t chunk = std::max<int64_t>(1, max_candidates / std::max<int64_t>(1, nof * fullest));
  std::vector<torch::Tensor> is, js, vs;
  for (int64_t a = 0; a < n; a += chunk) {
    const int64_t b = std::min(n, a + chunk);
    torch::Tensor len = block_len.slice(0, a * nof, b * nof);
    torch::Tensor rows = torch::arange(a * nof, b * nof, i64);
    torch::Tensor block = torch::repeat_interleave(rows, len);  // global (i, offset) row of every candidate
    if (block.numel() == 0) continue;
    torch::Tensor local = block - a * nof;
    torch::Tensor first = torch::cumsum(len, 0) - len;
    torch::Tensor k = torch::arange(block.numel(), i64) - first.index_select(0, local);
    torch::Tensor j = order.index_select(0, block_start.slice(0, a * nof, b * nof).index_select(0, local) + k);
    torch::Tensor vec = wrapped.index_select(0, j) - origin.index_select(0, block);
    torch::Tensor i = torch::div(block, nof, "floor");
    // within the centre cell (offset 0, never a shifted image) each unordered pair once
    torch::Tensor keep = ((vec * vec).sum(1) < cutoff * cutoff) & ((torch::remainder(block, nof) != 0) | (j > i));
    torch::Tensor sel = keep.nonzero().squeeze(1);
    is.push_back(i.index_select(0, sel));
    js.push_back(j.index_select(0, sel));
    vs.push_back(vec.index_select(0, sel));
  }
  if (is.empty()) {
    out.src = torch::empty({0}, i64);
    out.dst = torch::empty({0}, i64);
    out.vectors = torch::empty({0, 3}, real);
    return out;
  }
  torch::Tensor i = torch::cat(is), j = torch::cat(js), vec = torch::cat(vs);
  out.src = torch::cat({j, i});
  out.dst = torch::cat({i, j});
  out.vectors = torch::cat({vec, -vec});
  return out;
}

torch::Device model_device(const Model &model) { return detail::ImplAccess::device(model); }
torch::ScalarType model_dtype(const Model &model) { return detail::ImplAccess::dtype(model); }

Evaluation evaluate(const Model &model, const torch::Tensor &species_in, const Edges &edges, int64_t n_local)
{
  const torch::Device dev = model_device(model);
  const torch::ScalarType dtype = model_dtype(model);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  const int64_t n = species_in.size(0), n_edges = edges.src.size(0);
  if (n_local < 0 || n_local > n) throw Error("evaluate: need 0 <= n_local <= number of atoms");
  if (edges.dst.size(0) != n_edges || edges.vectors.dim() != 2 || edges.vectors.size(0) != n_edges ||
      edges.vectors.size(1) != 3)
    throw Error("evaluate: src, dst and vectors ([E, 3]) have inconsistent lengths");

  torch::NoGradGuard no_grad;
  torch::Tensor species = species_in.to(dev, torch::kInt64);
  torch::Tensor index = torch::stack({edges.src.to(dev, torch::kInt64), edges.dst.to(dev, torch::kInt64)});
  torch::Tensor vec = edges.vectors.to(dev, dtype);

  // the input checks of Model::compute, on the device, read back as four numbers
  const int64_t nspecies = static_cast<int64_t>(model.species_symbols().size());
  if (n > 0 || n_edges > 0) {
    torch::Tensor range = torch::stack({n > 0 ? species.min() : torch::zeros({}, i64),
                                        n > 0 ? species.max() : torch::zeros({}, i64),
                                        n_edges > 0 ? index.min() : torch::zeros({}, i64),
                                        n_edges > 0 ? index.max() : torch::zeros({}, i64)})
                              .cpu();
    const int64_t *r = range.data_ptr<int64_t>();
    if (n > 0 && (r[0] < 0 || r[1] >= nspecies))
      throw Error("evaluate: a species index is outside 0.." + std::to_string(nspecies - 1));
    if (n_edges > 0 && (r[2] < 0 || r[3] >= n))
      throw Error("evaluate: an edge refers to an atom outside 0.." + std::to_string(n - 1));
  }

  Evaluation out;
  out.min_distance = n_edges > 0 ? std::sqrt(edges.vectors.to(torch::kFloat64).pow(2).sum(1).min().item<double>())
                                 : std::numeric_limits<double>::infinity();
  out.forces = torch::zeros({n, 3}, torch::TensorOptions().dtype(torch::kFloat64).device(dev));
  if (n_local == 0) return out;  // the local energy is an empty sum
  try {
    if (detail::ImplAccess::is_package(model)) {
      const std::pair<torch::Tensor, torch::Tensor> r =
          detail::ImplAccess::run_package(model, species, index, vec, n_local);
      out.energy = r.first.slice(0, 0, n_local).to(torch::kFloat64).sum().item<double>();
      out.forces = detail::assemble_from_edge_gradient(index[0], index[1], vec, r.second.to(torch::kFloat64), n, false,
                                                     false)
                       .forces;
      return out;
    }
    c10::impl::GenericDict result{c10::AnyType::get(), c10::AnyType::get()};
    {
      // the model differentiates itself inside forward: grad mode on whatever the caller set
      torch::AutoGradMode grad_on(true);
      detail::LegacyExecutorScope legacy;
      result = detail::ImplAccess::module(model).forward({species, index, vec, n_local}).toGenericDict();
    }
    auto fetch = [&](const char *key) -> torch::Tensor {
      auto it = result.find(std::string(key));
      if (it == result.end()) throw Error(std::string("the model output lacks '") + key + "'");
      return it->value().toTensor().detach().to(torch::kFloat64);
    };
    torch::Tensor f = fetch("forces");
    if (f.numel() != 3 * n) throw Error("the model returned outputs of unexpected shapes");
    out.forces = f.reshape({n, 3});
    out.energy = fetch("energy").item<double>();
  } catch (const Error &) {
    throw;
  } catch (const std::exception &e) {
    throw Error("model evaluation failed (" + model.path() + " on " + model.device() +
                "): " + first_and_last_line(e.what()));
  }
  return out;
}

torch::Tensor particle_slots(const torch::Tensor &atom_index, const torch::Tensor &particles)
{
  const torch::Device dev = atom_index.device();
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  const int64_t num_atoms = atom_index.size(0);
  torch::Tensor slot_of = torch::empty({num_atoms}, i64);
  slot_of.index_copy_(0, atom_index.to(torch::kInt64), torch::arange(num_atoms, i64));
  return slot_of.index_select(0, particles.to(dev, torch::kInt64));
}

torch::Tensor gather_positions(const torch::Tensor &posq, const torch::Tensor &correction,
                               const torch::Tensor &atom_index, const torch::Tensor &particles, double scale,
                               torch::ScalarType dtype)
{
  torch::Tensor slots = particle_slots(atom_index, particles);
  torch::Tensor x = posq.index_select(0, slots).slice(1, 0, 3).to(torch::kFloat64);
  if (correction.defined()) x = x + correction.index_select(0, slots).slice(1, 0, 3).to(torch::kFloat64);
  return (x * scale).to(dtype);
}

void scatter_forces(torch::Tensor &force_buffer, const torch::Tensor &atom_index, const torch::Tensor &particles,
                    const torch::Tensor &forces, double scale)
{
  const int64_t padded = force_buffer.numel() / 3;
  torch::Tensor slots = particle_slots(atom_index, particles);
  // OpenMM's realToFixedPoint: value * 2^32 converted to a 64-bit integer (toward zero)
  torch::Tensor fixed = (forces.to(torch::kFloat64) * (scale * 4294967296.0)).to(torch::kInt64);
  torch::Tensor where = torch::stack({slots, slots + padded, slots + 2 * padded}, 1);  // [K, 3]
  force_buffer.view({-1}).index_add_(0, where.reshape({-1}), fixed.reshape({-1}));
}

}  // namespace device

namespace detail {

EdgeAssembly assemble_from_edge_gradient(const torch::Tensor &src, const torch::Tensor &dst,
                                         const torch::Tensor &vectors, const torch::Tensor &gvec, int64_t n_atoms,
                                         bool want_virial, bool want_atom_virial)
{
  // dE/dx_src = g_e, dE/dx_dst = -g_e
  EdgeAssembly out;
  out.forces = torch::zeros({n_atoms, 3}, gvec.options());
  out.forces.index_add_(0, src, -gvec);
  out.forces.index_add_(0, dst, gvec);
  if (!want_virial && !want_atom_virial) return out;
  const torch::Tensor r = vectors.to(gvec.scalar_type());
  if (want_virial) out.virial = -torch::mm(r.t(), gvec);
  if (want_atom_virial) {
    const torch::Tensor half = (-0.5 * r.unsqueeze(2) * gvec.unsqueeze(1));  // [E, 3, 3]
    out.atom_virial = torch::zeros({n_atoms, 3, 3}, gvec.options());
    out.atom_virial.index_add_(0, src, half);
    out.atom_virial.index_add_(0, dst, half);
  }
  return out;
}

}  // namespace detail
}  // namespace equiformer
