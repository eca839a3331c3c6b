// O(N) cell-list neighbor search for EquiformerForce (independent of OpenMM and libtorch).
//
// Periodic cells may be triclinic (any three linearly independent box vectors, e.g.
// OpenMM's reduced form). Every periodic image of every atom within the cutoff is found,
// an atom's own images included, as long as each perpendicular width of the cell is at
// least the cutoff. Edges are directed and come in both directions, in the model's
// convention: src = neighbour j, dst = centre i, vector = x_j (+ lattice shift) - x_i.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace EquiformerOpenMM {

struct NeighborList {
  std::vector<int64_t> src, dst;
  std::vector<double> vectors;  // 3 per edge
  size_t size() const { return src.size(); }
};

// Perpendicular widths of the cell spanned by the rows of box[9] (row-major, rows = a, b, c).
void boxWidths(const double *box, double widths[3]);

// Builds the list for n atoms at positions[3n] (same length unit as cutoff). box: nullptr
// for open boundaries, else 9 numbers (rows = box vectors). Throws std::invalid_argument
// for a degenerate box, a box narrower than the cutoff, or non-finite positions.
// The scratch buffers of `out` are reused between calls.
class CellList {
 public:
  void build(int n, const double *positions, const double *box, double cutoff, NeighborList &out);

 private:
  std::vector<double> wrapped_;      // 3n, positions mapped into the cell (or as given)
  std::vector<int> cellOf_;          // n
  std::vector<int> cellStart_;       // ncells + 1
  std::vector<int> cellAtoms_;       // n
};

}  // namespace EquiformerOpenMM
