// Device-generic tensor API of the runtime (internal: libtorch types, never installed). The same
// code runs on the CPU and on a CUDA device: every function works on the device of its tensor
// arguments with ATen operations only, so engines whose coordinates already live on a GPU (the
// OpenMM CUDA kernel, openmm_plugin/platforms/cuda/) keep them there, and the tests exercise the
// very same code on the CPU (cpp/tests/test_device_api.cpp).
#pragma once

#include "equiformer/runtime.h"

#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>

namespace equiformer {
namespace device {

// A directed neighbour list in the model convention (docs/model-format.md): src = neighbour j,
// dst = centre i, vectors = x_j - x_i (+ lattice shift), both directions of every pair.
struct Edges {
  torch::Tensor src, dst;  // int64 [E], on the positions' device
  torch::Tensor vectors;   // [E, 3], dtype and device of the positions
};

// The neighbour list of positions [N, 3] (any floating dtype, any device; float64 recommended)
// within CUTOFF (same length unit): a cell list in fractional coordinates built with ATen
// operations on the positions' device, O(N) memory (no N x N intermediate). BOX: undefined
// for open boundaries, else [3, 3] with the box vectors as rows (any dtype/device: it is read
// on the host, nine numbers); triclinic boxes of any shape whose perpendicular widths are at
// least the cutoff, also when a width is below two cutoffs (an atom then sees several images
// of another, all found). The edge set is that of equiformer::CellList. Throws
// std::invalid_argument for a box check_box refuses or non-finite positions (the same
// messages as the host cell list). Centre atoms are searched in chunks of at most
// MAX_CANDIDATES candidate pairs (memory bound; tests make it small).
Edges neighbors(const torch::Tensor &positions, const torch::Tensor &box, double cutoff,
                int64_t max_candidates = int64_t(1) << 22);

// The device a model runs on and its dtype (what evaluate() expects its inputs on / in).
torch::Device model_device(const Model &model);
torch::ScalarType model_dtype(const Model &model);

struct Evaluation {
  double energy = 0.0;        // sum of the atom energies of atoms 0..n_local-1 (model units; no offset)
  torch::Tensor forces;       // [N, 3] float64 on the model's device, model units
  double min_distance = 0.0;  // shortest edge (model length unit; inf without edges)
};

// One evaluation of MODEL on device tensors: species int64 [N], edges (any device/dtype: moved
// to the model's device and dtype when they are elsewhere), atoms 0..n_local-1 local. The
// forces are the model's own (TorchScript: its forward's "forces", the Python definition in
// equiformer/forces.py; compiled packages: the runtime's assembly from the edge gradient,
// equiformer::detail::assemble_from_edge_gradient) and stay on the device; only the energy and
// the shortest edge come back to the host. Throws equiformer::Error like Model::compute.
Evaluation evaluate(const Model &model, const torch::Tensor &species, const Edges &edges, int64_t n_local);

// OpenMM layout helpers (CUDA platform: ComputeContext::getPosq / getAtomIndexArray /
// getLongForceBuffer), device-generic so that they are tested on the CPU.
//
// posq [paddedN, 4] float32 or float64: slot s holds (x, y, z, charge) of System atom
// atom_index[s]; correction (mixed precision, getPosqCorrection): undefined, or [paddedN, 4]
// float32 with the low-order part of each position (the position is posq + correction).
// atom_index int32 [numAtoms] (slot -> System index; only the first numAtoms slots hold atoms),
// particles int64 [K] (ML atom k -> System index). Returns [K, 3] positions * SCALE in DTYPE.
torch::Tensor gather_positions(const torch::Tensor &posq, const torch::Tensor &correction,
                               const torch::Tensor &atom_index, const torch::Tensor &particles, double scale,
                               torch::ScalarType dtype = torch::kFloat64);

// The slot of every ML atom: inverse of atom_index, taken at particles (int64 [K]).
torch::Tensor particle_slots(const torch::Tensor &atom_index, const torch::Tensor &particles);

// Adds forces [K, 3] * SCALE of the ML atoms to OpenMM's fixed-point force buffer int64
// [3 * paddedN] (x block, y block, z block; value * 2^32, rounded toward zero like OpenMM's
// realToFixedPoint), in place. K distinct particles: no two rows go to the same slot.
void scatter_forces(torch::Tensor &force_buffer, const torch::Tensor &atom_index, const torch::Tensor &particles,
                    const torch::Tensor &forces, double scale);

}  // namespace device

namespace detail {

// Model::Impl for the device API (declared a friend in runtime.h; defined in runtime.cpp, where
// Model::Impl is complete).
struct ImplAccess {
  static torch::jit::Module &module(const Model &model);
  static torch::Device device(const Model &model);
  static torch::ScalarType dtype(const Model &model);
  static bool is_package(const Model &model);
  // One call of a compiled package on tensors already on its device (species [N], index
  // [2, E], vectors [E, 3] in the model dtype): atom energies [N] and d E / d vector [E, 3],
  // with the runtime's padding (the same as Model::compute's).
  static std::pair<torch::Tensor, torch::Tensor> run_package(const Model &model, const torch::Tensor &species,
                                                             const torch::Tensor &index,
                                                             const torch::Tensor &vectors, int64_t n_local);
};

// The one C++ definition of forces and virials from d E / d edge vector (r_e = x_src - x_dst,
// F = -dE/dx, virial = sum_e r_e (x) (-g_e), half of each edge's term to either atom), on the
// device of GVEC [E, 3] float64. Host evaluations (runtime.cpp) and device ones use it.
struct EdgeAssembly {
  torch::Tensor forces;       // [N, 3]
  torch::Tensor virial;       // [3, 3] row-major, undefined unless asked for
  torch::Tensor atom_virial;  // [N, 3, 3], undefined unless asked for
};
EdgeAssembly assemble_from_edge_gradient(const torch::Tensor &src, const torch::Tensor &dst,
                                         const torch::Tensor &vectors, const torch::Tensor &gvec, int64_t n_atoms,
                                         bool want_virial, bool want_atom_virial);

}  // namespace detail
}  // namespace equiformer
