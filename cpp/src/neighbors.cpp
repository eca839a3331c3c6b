// Cell-list neighbour search: fractional coordinates, cells at least one cutoff thick across
// every lattice plane, 27 neighbouring cells (with their lattice shifts) per cell.
#include "equiformer/neighbors.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace equiformer {

namespace {

void cross(const double *u, const double *v, double *w)
{
  w[0] = u[1] * v[2] - u[2] * v[1];
  w[1] = u[2] * v[0] - u[0] * v[2];
  w[2] = u[0] * v[1] - u[1] * v[0];
}

double dot(const double *u, const double *v) { return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]; }

// floor division for the (small) cell index offsets
inline int floorDiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Largest grid with at most `limit` cells: keeps memory O(N) for sparse or exploded systems.
void limitCells(int counts[3], long limit)
{
  while (static_cast<long>(counts[0]) * counts[1] * counts[2] > limit) {
    int k = static_cast<int>(std::max_element(counts, counts + 3) - counts);
    counts[k] = std::max(1, counts[k] / 2);
  }
}

}  // namespace

std::array<double, 3> box_widths(const double *box)
{
  double bc[3], ca[3], ab[3];
  cross(box + 3, box + 6, bc);
  cross(box + 6, box + 0, ca);
  cross(box + 0, box + 3, ab);
  const double volume = std::fabs(dot(box, bc));
  return {volume / std::sqrt(dot(bc, bc)), volume / std::sqrt(dot(ca, ca)), volume / std::sqrt(dot(ab, ab))};
}

void check_box(const double *box, double cutoff, const std::string &unit, double scale)
{
  for (int k = 0; k < 9; ++k)
    if (!std::isfinite(box[k])) throw std::invalid_argument("the periodic box has non-finite components");
  const std::array<double, 3> widths = box_widths(box);
  if (!(std::min({widths[0], widths[1], widths[2]}) > 0.0))
    throw std::invalid_argument("the periodic box vectors are degenerate (zero volume)");
  const std::string u = unit.empty() ? "" : " " + unit;
  for (int k = 0; k < 3; ++k)
    if (!(widths[k] >= cutoff)) {
      std::ostringstream msg;
      msg.precision(6);
      msg << "periodic box too small for the model: its width across box vector " << "abc"[k] << " is "
          << widths[k] * scale << u << ", smaller than the model cutoff " << cutoff * scale << u
          << "; every width of the box must be >= the cutoff (use a larger box or more replicas)";
      throw std::invalid_argument(msg.str());
    }
}

void CellList::build(int n, const double *positions, const double *box, double cutoff, NeighborList &out)
{
  out.src.clear();
  out.dst.clear();
  out.vectors.clear();
  if (!(cutoff > 0.0)) throw std::invalid_argument("the cutoff must be positive");
  for (int k = 0; k < 3 * n; ++k)
    if (!std::isfinite(positions[k]))
      throw std::invalid_argument("atom " + std::to_string(k / 3) +
                                  " has a non-finite coordinate (the simulation has become unstable)");
  if (n == 0) return;
  const bool periodic = box != nullptr;
  const long cellLimit = std::max<long>(27, 2L * n);
  int counts[3] = {1, 1, 1};
  double origin[3] = {0, 0, 0}, extent[3] = {0, 0, 0};

  wrapped_.assign(positions, positions + 3 * n);
  frac_.resize(3 * static_cast<size_t>(n));
  if (periodic) {
    check_box(box, cutoff);
    const std::array<double, 3> widths = box_widths(box);
    for (int k = 0; k < 3; ++k) counts[k] = std::max(1, static_cast<int>(std::floor(widths[k] / cutoff)));
    double bc[3], ca[3], ab[3];
    cross(box + 3, box + 6, bc);
    cross(box + 6, box + 0, ca);
    cross(box + 0, box + 3, ab);
    const double volume = dot(box, bc);
    double inverse[9];  // reciprocal vectors as columns (fractional = x . inverse): inverse[r*3+c]
    for (int r = 0; r < 3; ++r) {
      inverse[r * 3 + 0] = bc[r] / volume;
      inverse[r * 3 + 1] = ca[r] / volume;
      inverse[r * 3 + 2] = ab[r] / volume;
    }
    for (int i = 0; i < n; ++i) {
      const double *x = positions + 3 * i;
      double s[3];
      for (int c = 0; c < 3; ++c) {
        s[c] = x[0] * inverse[0 * 3 + c] + x[1] * inverse[1 * 3 + c] + x[2] * inverse[2 * 3 + c];
        s[c] -= std::floor(s[c]);
        if (s[c] >= 1.0) s[c] = 0.0;  // rounding of tiny negative numbers
        frac_[3 * i + c] = s[c];
      }
      for (int c = 0; c < 3; ++c)
        wrapped_[3 * i + c] = s[0] * box[0 * 3 + c] + s[1] * box[1 * 3 + c] + s[2] * box[2 * 3 + c];
    }
  } else {
    for (int c = 0; c < 3; ++c) {
      double lo = positions[c], hi = positions[c];
      for (int i = 1; i < n; ++i) {
        lo = std::min(lo, positions[3 * i + c]);
        hi = std::max(hi, positions[3 * i + c]);
      }
      origin[c] = lo;
      extent[c] = hi - lo;
      double cells = std::floor(extent[c] / cutoff) + 1.0;
      counts[c] = static_cast<int>(std::min(cells, 1.0e6));
    }
  }
  limitCells(counts, cellLimit);
  if (!periodic) {
    // open boundaries: cell edge = max(cutoff, extent / count) so neighbours are at most one cell apart
    for (int c = 0; c < 3; ++c) {
      double edge = std::max(cutoff, extent[c] / counts[c]);
      counts[c] = std::max(1, std::min(counts[c], static_cast<int>(std::floor(extent[c] / edge)) + 1));
      for (int i = 0; i < n; ++i) frac_[3 * i + c] = (positions[3 * i + c] - origin[c]) / edge / counts[c];
    }
  }

  const int ncells = counts[0] * counts[1] * counts[2];
  cellOf_.resize(n);
  cellStart_.assign(ncells + 1, 0);
  cellAtoms_.resize(n);
  for (int i = 0; i < n; ++i) {
    int idx[3];
    for (int c = 0; c < 3; ++c)
      idx[c] = std::min(counts[c] - 1, std::max(0, static_cast<int>(frac_[3 * i + c] * counts[c])));
    cellOf_[i] = (idx[0] * counts[1] + idx[1]) * counts[2] + idx[2];
    ++cellStart_[cellOf_[i] + 1];
  }
  for (int k = 0; k < ncells; ++k) cellStart_[k + 1] += cellStart_[k];
  {
    std::vector<int> fill(cellStart_.begin(), cellStart_.end() - 1);
    for (int i = 0; i < n; ++i) cellAtoms_[fill[cellOf_[i]]++] = i;
  }

  const double rc2 = cutoff * cutoff;
  for (int i = 0; i < n; ++i) {
    const int ci = cellOf_[i];
    const int idx[3] = {ci / (counts[1] * counts[2]), (ci / counts[2]) % counts[1], ci % counts[2]};
    const double *xi = wrapped_.data() + 3 * i;
    for (int d0 = -1; d0 <= 1; ++d0)
      for (int d1 = -1; d1 <= 1; ++d1)
        for (int d2 = -1; d2 <= 1; ++d2) {
          const int raw[3] = {idx[0] + d0, idx[1] + d1, idx[2] + d2};
          int shift[3] = {0, 0, 0}, cell[3];
          bool skip = false;
          for (int c = 0; c < 3; ++c) {
            if (periodic) {
              shift[c] = floorDiv(raw[c], counts[c]);
              cell[c] = raw[c] - shift[c] * counts[c];
            } else {
              if (raw[c] < 0 || raw[c] >= counts[c]) skip = true;
              cell[c] = raw[c];
            }
          }
          if (skip) continue;
          // with fewer than 3 cells along an axis two offsets may reach the same cell; they
          // then differ in their lattice shift, i.e. they are different images
          double offset[3] = {0, 0, 0};
          if (periodic)
            for (int c = 0; c < 3; ++c)
              offset[c] = shift[0] * box[0 * 3 + c] + shift[1] * box[1 * 3 + c] + shift[2] * box[2 * 3 + c];
          const bool zeroShift = shift[0] == 0 && shift[1] == 0 && shift[2] == 0;
          const int cj = (cell[0] * counts[1] + cell[1]) * counts[2] + cell[2];
          for (int k = cellStart_[cj]; k < cellStart_[cj + 1]; ++k) {
            const int j = cellAtoms_[k];
            if (j == i && zeroShift) continue;
            const double *xj = wrapped_.data() + 3 * j;
            const double v[3] = {xj[0] + offset[0] - xi[0], xj[1] + offset[1] - xi[1], xj[2] + offset[2] - xi[2]};
            if (dot(v, v) < rc2) {
              out.src.push_back(j);
              out.dst.push_back(i);
              out.vectors.insert(out.vectors.end(), v, v + 3);
            }
          }
        }
  }
}

}  // namespace equiformer
