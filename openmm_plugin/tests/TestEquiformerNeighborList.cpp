// The C++ cell list (cpp/include/equiformer/neighbors.h) on the neighbour-search cases shared
// with the vesin and TorchScript searches, against their brute-force answers: both written by
// tests/neighbor_cases.py into the file given as the only argument. Then the boxes it refuses.
#include "equiformer/neighbors.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

using equiformer::CellList;
using equiformer::NeighborList;

namespace {

using Edge = std::tuple<int64_t, int64_t, long, long, long>;  // src, dst, vector in 1e-6 units

std::vector<Edge> canonical(const NeighborList &nl)
{
  std::vector<Edge> out;
  for (size_t e = 0; e < nl.size(); ++e)
    out.emplace_back(nl.src[e], nl.dst[e], std::lround(nl.vectors[3 * e] * 1e6),
                     std::lround(nl.vectors[3 * e + 1] * 1e6), std::lround(nl.vectors[3 * e + 2] * 1e6));
  std::sort(out.begin(), out.end());
  return out;
}

int failures = 0;

void report(bool ok, const std::string &what)
{
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

// One case of the file: name, atoms, box (nullptr-like when not periodic), cutoff, reference.
bool checkNextCase(std::ifstream &in)
{
  std::string tag, name;
  if (!(in >> tag >> name)) return false;
  if (tag != "case") throw std::runtime_error("malformed cases file near '" + tag + "'");
  int n, periodic;
  double cutoff, box[9];
  in >> n >> periodic >> cutoff;
  for (double &b : box) in >> b;
  std::vector<double> positions(3 * static_cast<size_t>(n));
  for (double &x : positions) in >> x;
  size_t edges;
  in >> edges;
  NeighborList want;
  for (size_t e = 0; e < edges; ++e) {
    int64_t s, d;
    double v[3];
    in >> s >> d >> v[0] >> v[1] >> v[2];
    want.src.push_back(s);
    want.dst.push_back(d);
    want.vectors.insert(want.vectors.end(), v, v + 3);
  }
  if (!in) throw std::runtime_error("malformed cases file in case " + name);
  CellList cells;
  NeighborList got;
  cells.build(n, positions.data(), periodic ? box : nullptr, cutoff, got);
  report(canonical(got) == canonical(want),
         name + ": " + std::to_string(got.size()) + " edges, brute force " + std::to_string(want.size()));
  return true;
}

// Calls cells.build and reports whether it threw std::invalid_argument mentioning `expected`.
void checkRefused(const std::string &what, const double *box, std::vector<double> positions,
                  const std::string &expected)
{
  CellList cells;
  NeighborList nl;
  try {
    cells.build(static_cast<int>(positions.size() / 3), positions.data(), box, 1.0, nl);
    report(false, what + " accepted");
  } catch (const std::invalid_argument &e) {
    report(std::string(e.what()).find(expected) != std::string::npos, what + " refused: " + e.what());
  }
}

}  // namespace

int main(int argc, char **argv)
{
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CASES (written by tests/neighbor_cases.py)\n", argv[0]);
    return 2;
  }
  std::ifstream in(argv[1]);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", argv[1]);
    return 2;
  }
  int cases = 0;
  while (checkNextCase(in)) ++cases;
  report(cases > 0, std::to_string(cases) + " cases read");

  const double narrow[9] = {0.9, 0, 0, 0, 2, 0, 0, 0, 2};
  checkRefused("box narrower than the cutoff", narrow, {0.1, 0.1, 0.1, 0.5, 0.5, 0.5},
               "its width across box vector a is 0.9, smaller than the model cutoff 1;");
  const double flat[9] = {1, 0, 0, 2, 0, 0, 0, 0, 2};
  checkRefused("degenerate box", flat, {0.1, 0.1, 0.1}, "degenerate");
  checkRefused("non-finite position", nullptr, {0.1, 0.1, NAN}, "atom 0 has a non-finite coordinate");
  // the message in another unit (the OpenMM plugin: model Angstrom shown in nm)
  try {
    equiformer::check_box(narrow, 1.0, "nm", 0.1);
    report(false, "check_box accepted a narrow box");
  } catch (const std::invalid_argument &e) {
    report(std::string(e.what()).find("is 0.09 nm, smaller than the model cutoff 0.1 nm") != std::string::npos,
           std::string("check_box in nm: ") + e.what());
  }
  return failures == 0 ? 0 : 1;
}
