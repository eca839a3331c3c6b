// The cell list against a brute-force search over lattice images, for open boundaries,
// orthorhombic and triclinic (OpenMM reduced form) cells, including cells only slightly
// wider than the cutoff, where atoms see their own images and several images of a neighbour.
#include "internal/EquiformerNeighborList.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

using namespace EquiformerOpenMM;

using Edge = std::tuple<long, long, long, long, long>;  // src, dst, rounded vector

static std::vector<Edge> canonical(const NeighborList &nl)
{
  std::vector<Edge> out;
  for (size_t e = 0; e < nl.size(); ++e)
    out.emplace_back(nl.src[e], nl.dst[e], std::lround(nl.vectors[3 * e] * 1e6),
                     std::lround(nl.vectors[3 * e + 1] * 1e6), std::lround(nl.vectors[3 * e + 2] * 1e6));
  std::sort(out.begin(), out.end());
  return out;
}

static NeighborList bruteForce(int n, const std::vector<double> &x, const double *box, double rc)
{
  NeighborList nl;
  const int r = box ? 4 : 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      for (int a = -r; a <= r; ++a)
        for (int b = -r; b <= r; ++b)
          for (int c = -r; c <= r; ++c) {
            if (i == j && a == 0 && b == 0 && c == 0) continue;
            double v[3];
            for (int k = 0; k < 3; ++k) {
              v[k] = x[3 * j + k] - x[3 * i + k];
              if (box) v[k] += a * box[k] + b * box[3 + k] + c * box[6 + k];
            }
            if (v[0] * v[0] + v[1] * v[1] + v[2] * v[2] < rc * rc) {
              nl.src.push_back(j);
              nl.dst.push_back(i);
              nl.vectors.insert(nl.vectors.end(), v, v + 3);
            }
          }
  return nl;
}

static int failures = 0;

static void check(const char *what, int n, const std::vector<double> &x, const double *box, double rc)
{
  CellList cells;
  NeighborList nl;
  cells.build(n, x.data(), box, rc, nl);
  std::vector<Edge> got = canonical(nl), want = canonical(bruteForce(n, x, box, rc));
  if (got != want) {
    std::printf("FAIL %s: %zu edges, brute force %zu\n", what, got.size(), want.size());
    ++failures;
  } else {
    std::printf("ok   %s: %zu edges\n", what, got.size());
  }
}

int main()
{
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double rc = 1.0;
  // open boundaries, dense and very sparse
  // (the sparse case: two clusters 1000 cutoffs apart, so the cell grid must be capped)
  for (double distance : {0.0, 1000.0}) {
    int n = 60;
    std::vector<double> x(3 * n);
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < 3; ++k) x[3 * i + k] = 2.5 * u(rng) + (i % 2 ? distance : 0.0);
    check(distance == 0.0 ? "open dense" : "open, two distant clusters", n, x, nullptr, rc);
  }
  // periodic cells: {a, bx, by, cx, cy, cz}, all valid reduced forms
  const double cells[][6] = {
      {3.7, 0, 3.1, 0, 0, 4.2},         // orthorhombic, several cells per axis
      {1.05, 0, 1.2, 0, 0, 1.6},        // widths just above the cutoff: own images
      {2.2, 0.9, 2.1, -1.0, 0.7, 2.4},  // triclinic, two cells per axis
      {4.5, 2.2, 3.9, 2.0, -1.9, 3.3},  // strongly skewed triclinic
      {1.3, 0.6, 1.25, 0.5, 0.6, 1.1},  // skewed and thin
  };
  for (const auto &c : cells) {
    double box[9] = {c[0], 0, 0, c[1], c[2], 0, c[3], c[4], c[5]};
    int n = 24;
    std::vector<double> x(3 * n);
    // positions inside the cell, then some displaced by lattice vectors (must not matter)
    for (int i = 0; i < n; ++i) {
      double s[3] = {u(rng), u(rng), u(rng)};
      int shift = (i % 3) - 1;
      for (int k = 0; k < 3; ++k)
        x[3 * i + k] = (s[0] + shift) * box[k] + s[1] * box[3 + k] + (s[2] - shift) * box[6 + k];
    }
    char name[96];
    std::snprintf(name, sizeof name, "periodic a=%.2f b=(%.2f,%.2f) c=(%.2f,%.2f,%.2f)", c[0], c[1], c[2], c[3],
                  c[4], c[5]);
    // edge vectors do not depend on which image of an atom is given: compare with brute force
    check(name, n, x, box, rc);
  }
  // a box narrower than the cutoff is refused
  try {
    double box[9] = {0.9, 0, 0, 0, 2, 0, 0, 0, 2};
    std::vector<double> x(6, 0.1);
    CellList cl;
    NeighborList nl;
    cl.build(2, x.data(), box, rc, nl);
    std::printf("FAIL narrow box accepted\n");
    ++failures;
  } catch (const std::invalid_argument &e) {
    std::printf("ok   narrow box refused: %s\n", e.what());
  }
  return failures == 0 ? 0 : 1;
}
