// Neighbour search for engines that do not bring their own (the OpenMM plugin): an O(N) cell
// list over open or periodic boundaries. Independent of libtorch.
//
// Periodic cells may be triclinic (any three linearly independent box vectors, e.g.
// OpenMM's reduced form). Every periodic image of every atom within the cutoff is found, as
// long as each perpendicular width of the cell is at least the cutoff (check_box). Edges are
// directed and come in both directions, in the model's convention (docs/model-format.md):
// src = neighbour j, dst = centre i, vector = x_j (+ lattice shift) - x_i.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace equiformer {

struct NeighborList {
  std::vector<int64_t> src, dst;
  std::vector<double> vectors;  // 3 per edge
  size_t size() const { return src.size(); }
};

// Perpendicular widths of the cell spanned by the rows of box[9] (row-major, rows = a, b, c):
// the distances between its opposite faces.
std::array<double, 3> box_widths(const double *box);

// Throws std::invalid_argument when box[9] cannot be searched for CUTOFF: non-finite,
// degenerate, or narrower than the cutoff across one of its vectors (the cell list looks one
// cell, at least a cutoff thick, in each direction). Lengths in the message are multiplied by
// SCALE and followed by UNIT (e.g. the model's length unit shown in nm).
void check_box(const double *box, double cutoff, const std::string &unit = "", double scale = 1.0);

// Builds the list for n atoms at positions[3n] (same length unit as cutoff). box: nullptr
// for open boundaries, else 9 numbers (rows = box vectors), checked by check_box. Throws
// std::invalid_argument for a box check_box refuses or non-finite positions. The scratch
// buffers are reused between calls.
class CellList {
 public:
  void build(int n, const double *positions, const double *box, double cutoff, NeighborList &out);

 private:
  std::vector<double> wrapped_;      // 3n, positions mapped into the cell (or as given)
  std::vector<double> frac_;         // 3n, fractional position within the grid
  std::vector<int> cellOf_;          // n
  std::vector<int> cellStart_;       // ncells + 1
  std::vector<int> cellAtoms_;       // n
};

}  // namespace equiformer
