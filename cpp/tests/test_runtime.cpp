// Tests of equiformer_runtime against the analytic pair model (tests/analytic_models.py).
// Usage: test_runtime DIR  (DIR written by make_models.py)
#include "checks.h"
#include "equiformer/runtime.h"

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

using equiformer_test::check;

void check_close(double got, double want, double tol, const std::string &what)
{
  bool ok = std::isnan(want) || std::fabs(got - want) <= tol * (1.0 + std::fabs(want));
  if (!ok) std::cerr << "  " << what << ": got " << got << " want " << want << "\n";
  check(ok, what);
}

// Expect an equiformer::Error whose message contains NEEDLE.
void check_throws(const std::function<void()> &f, const std::string &needle, const std::string &what)
{
  try {
    f();
  } catch (const equiformer::Error &e) {
    bool ok = std::string(e.what()).find(needle) != std::string::npos;
    if (!ok) std::cerr << "  " << what << ": message was: " << e.what() << "\n";
    check(ok, what + " (message mentions '" + needle + "')");
    return;
  } catch (const std::exception &e) {
    check(false, what + ": threw a non-equiformer exception: " + e.what());
    return;
  }
  check(false, what + ": did not throw");
}

struct Case {
  std::string name;
  long n = 0, e = 0, n_local = 0;
  std::vector<int64_t> species, src, dst;
  std::vector<double> vec, energies, forces, virial;
  double energy = 0.0;
};

template <class T>
std::vector<T> read_line(std::istream &in, size_t n)
{
  std::string line;
  std::getline(in, line);
  std::istringstream s(line);
  std::vector<T> v;
  std::string tok;
  while (s >> tok) v.push_back(tok == "nan" ? T(NAN) : static_cast<T>(std::stod(tok)));
  if (v.size() != n) throw std::runtime_error("graphs.txt: bad line length");
  return v;
}

std::vector<Case> read_cases(const std::string &file)
{
  std::ifstream in(file);
  if (!in) throw std::runtime_error("cannot open " + file);
  std::vector<Case> cases;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("case ", 0) != 0) continue;
    Case c;
    c.name = line.substr(5);
    std::getline(in, line);
    std::istringstream(line) >> c.n >> c.e >> c.n_local;
    c.species = read_line<int64_t>(in, c.n);
    c.src = read_line<int64_t>(in, c.e);
    c.dst = read_line<int64_t>(in, c.e);
    c.vec = read_line<double>(in, 3 * c.e);
    c.energy = read_line<double>(in, 1)[0];
    c.energies = read_line<double>(in, c.n);
    c.forces = read_line<double>(in, 3 * c.n);
    c.virial = read_line<double>(in, 9);
    cases.push_back(c);
  }
  return cases;
}

void check_case(const equiformer::Model &model, const Case &c, double tol)
{
  const std::string tag = model.dtype() + " " + c.name;
  equiformer::Result r = model.compute(c.species, c.src, c.dst, c.vec, c.n_local, true);
  check_close(r.energy, c.energy, tol, tag + " energy");
  for (long i = 0; i < c.n_local; ++i) check_close(r.atom_energies[i], c.energies[i], tol, tag + " atom energy");
  for (long k = 0; k < 3 * c.n; ++k) check_close(r.forces[k], c.forces[k], tol, tag + " forces");
  for (int k = 0; k < 9; ++k) check_close(r.virial[k], c.virial[k], tol, tag + " virial");
  // per-atom virials sum to the global virial
  for (int k = 0; k < 9; ++k) {
    double s = 0.0;
    for (long i = 0; i < c.n; ++i) s += r.atom_virial[9 * i + k];
    check_close(s, r.virial[k], tol, tag + " sum of atom virials");
  }
  // without per-atom virial: nothing else changes
  equiformer::Result r2 = model.compute(c.species, c.src, c.dst, c.vec, c.n_local, false);
  check(r2.atom_virial.empty(), tag + " no atom virial unless asked");
  check_close(r2.energy, r.energy, 1e-14, tag + " repeatable energy");
}

// one rank, every node local: nothing to exchange, but count the calls
struct CountingExchange : equiformer::LayerExchange {
  int forwards = 0, reverses = 0;
  std::vector<int64_t> widths;
  void forward(double *, int64_t, int64_t F) override { ++forwards; widths.push_back(F); }
  void reverse(double *, int64_t, int64_t) override { ++reverses; }
};

// layer by layer (no ghosts) = forward(), for every output
void check_layered(const equiformer::Model &model, const Case &c, double tol)
{
  const std::string tag = "layered " + c.name;
  equiformer::Result a = model.compute(c.species, c.src, c.dst, c.vec, c.n, true), b;
  CountingExchange ex;
  model.compute_layered(static_cast<int64_t>(c.species.size()), c.species.data(), static_cast<int64_t>(c.src.size()),
                        c.src.data(), c.dst.data(), c.vec.data(), c.n, true, ex, b);
  check(ex.forwards == model.num_layers() + 1 && ex.reverses == model.num_layers() + 1, tag + " exchange calls");
  check(ex.widths == model.layer_feature_sizes(), tag + " exchanged widths");
  check_close(b.energy, a.energy, tol, tag + " energy");
  for (long i = 0; i < c.n; ++i) check_close(b.atom_energies[i], a.atom_energies[i], tol, tag + " atom energy");
  for (long k = 0; k < 3 * c.n; ++k) check_close(b.forces[k], a.forces[k], tol, tag + " forces");
  for (int k = 0; k < 9; ++k) check_close(b.virial[k], a.virial[k], tol, tag + " virial");
  for (long k = 0; k < 9 * c.n; ++k) check_close(b.atom_virial[k], a.atom_virial[k], tol, tag + " atom virial");
}

// One rank whose graph holds some atoms twice, as in pair_style equiformer mode layer: local
// nodes 0..n_local-1, then ghost nodes n_local.. copying owner[k - n_local]. forward() copies
// the owners' rows into the ghosts, reverse() folds the ghosts' rows onto the owners;
// BOUNDARY is what it reports as boundary rows (nullptr: the default, every row).
struct ImageExchange : equiformer::LayerExchange {
  int64_t n_local = 0;
  std::vector<int64_t> owner;
  const std::vector<int64_t> *boundary = nullptr;
  bool others_zero = true;  // with a boundary set: the other local rows arrived as zeros
  void forward(double *x, int64_t n, int64_t F) override
  {
    check_others(x, F);
    for (int64_t k = n_local; k < std::min<int64_t>(n, n_local + static_cast<int64_t>(owner.size())); ++k)
      for (int64_t c = 0; c < F; ++c) x[k * F + c] = x[owner[k - n_local] * F + c];
  }
  void reverse(double *g, int64_t n, int64_t F) override
  {
    check_others(g, F);
    for (int64_t k = n_local; k < std::min<int64_t>(n, n_local + static_cast<int64_t>(owner.size())); ++k)
      for (int64_t c = 0; c < F; ++c) {
        g[owner[k - n_local] * F + c] += g[k * F + c];
        g[k * F + c] = 0.0;
      }
  }
  const std::vector<int64_t> *boundary_rows() override { return boundary; }
  void check_others(const double *x, int64_t F)
  {
    if (!boundary) return;
    for (int64_t i = 0; i < n_local; ++i)
      if (!std::binary_search(boundary->begin(), boundary->end(), i))
        for (int64_t c = 0; c < F; ++c) others_zero = others_zero && x[i * F + c] == 0.0;
  }
};

// C's graph (every atom local) with the sources of the edges from every third atom moved to
// ghost copies of those atoms: compute_layered with ImageExchange must reproduce compute()
// when the boundary set is right (bit for bit the full-copy answer), and differ when a
// boundary row is missing; only boundary and ghost rows cross.
void check_boundary_rows(const equiformer::Model &model, const Case &c)
{
  const std::string tag = "boundary rows " + c.name;
  equiformer::Result ref = model.compute(c.species, c.src, c.dst, c.vec, c.n, true);
  std::vector<int64_t> species = c.species, src = c.src, ghost_of(c.n, -1), owner;
  for (long e = 0; e < c.e; ++e) {
    const int64_t j = c.src[e];
    if (j % 3 != 1) continue;
    if (ghost_of[j] < 0) {
      ghost_of[j] = c.n + static_cast<int64_t>(owner.size());
      owner.push_back(j);
      species.push_back(c.species[j]);
    }
    src[e] = ghost_of[j];
  }
  const int64_t n = static_cast<int64_t>(species.size()), G = n - c.n;
  check(G > 0, tag + ": the graph has ghost nodes");
  std::vector<int64_t> boundary;
  for (long i = 0; i < c.n; ++i)
    if (ghost_of[i] >= 0) boundary.push_back(i);
  const int64_t exchanges = model.num_layers() + 1;

  auto run = [&](const std::vector<int64_t> *b, ImageExchange &ex) {
    ex.n_local = c.n;
    ex.owner = owner;
    ex.boundary = b;
    equiformer::Result r;
    model.compute_layered(n, species.data(), c.e, src.data(), c.dst.data(), c.vec.data(), c.n, true, ex, r);
    return r;
  };
  ImageExchange full, part, wrong;
  const equiformer::Result a = run(nullptr, full), b = run(&boundary, part);
  check(full.rows_to_host == 2 * exchanges * n && full.rows_to_device == 2 * exchanges * n,
        tag + ": without a boundary set every row crosses both ways");
  const int64_t B = static_cast<int64_t>(boundary.size());
  check(part.rows_to_host == exchanges * (B + G) && part.rows_to_device == exchanges * (B + G),
        tag + ": with it only the boundary and ghost rows");
  check(part.others_zero, tag + ": rows outside the boundary set are not copied");
  // the same numbers as the whole copies (CPU, float64)
  check(a.energy == b.energy && a.atom_energies == b.atom_energies && a.forces == b.forces &&
            a.virial == b.virial && a.atom_virial == b.atom_virial,
        tag + ": bit-identical to whole-matrix copies");
  // and compute() on the graph without ghosts (ghost forces folded onto their owners)
  std::vector<double> folded(b.forces.begin(), b.forces.begin() + 3 * c.n);
  for (int64_t k = 0; k < G; ++k)
    for (int a3 = 0; a3 < 3; ++a3) folded[3 * owner[k] + a3] += b.forces[3 * (c.n + k) + a3];
  check_close(b.energy, ref.energy, 1e-12, tag + " energy");
  for (long i = 0; i < c.n; ++i) check_close(b.atom_energies[i], ref.atom_energies[i], 1e-12, tag + " atom energy");
  for (long k = 0; k < 3 * c.n; ++k) check_close(folded[k], ref.forces[k], 1e-12, tag + " forces");
  for (int k = 0; k < 9; ++k) check_close(b.virial[k], ref.virial[k], 1e-12, tag + " virial");

  // a boundary set missing one owner: its ghost copy reads zeros, its gradient is lost
  std::vector<int64_t> missing(boundary.begin() + 1, boundary.end());
  const equiformer::Result w = run(&missing, wrong);
  double worst = std::fabs(w.energy - ref.energy);
  for (long k = 0; k < 3 * n; ++k) worst = std::max(worst, std::fabs(w.forces[k] - b.forces[k]));
  check(worst > 1e-6, tag + ": a missing boundary row changes the result");
}

// The analytic pair committee (tests/analytic_models.py: write_pair_committee) on the periodic
// graph: every member output equals its closed form, the usual outputs are their means.
void check_committee(const std::string &dir, const Case &c, const equiformer::Model &single)
{
  equiformer::Model m(dir + "/committee.pt", "cpu");
  check(m.committee_size() == 3 && single.committee_size() == 1, "committee_size: 3 members; a single model 1");
  check_close(m.energy_offset(), (0.5 + 1.0 + 3.0) / 3.0, 1e-15, "committee energy offset: the members' mean");
  check(!m.has_layer_methods(), "a committee exports no layer methods");

  std::ifstream in(dir + "/committee.txt");
  long K = 0, n = 0;
  {
    std::string line;
    std::getline(in, line);
    std::istringstream(line) >> K >> n;
  }
  check(K == 3 && n == c.n, "committee.txt: 3 members of the periodic case");
  const std::vector<double> energies = read_line<double>(in, K), atom_energies = read_line<double>(in, K * n),
                            forces = read_line<double>(in, K * n * 3), virials = read_line<double>(in, K * 9);

  equiformer::Result r = m.compute(c.species, c.src, c.dst, c.vec, c.n_local, true);
  check(r.member_energies.size() == 3 && r.member_atom_energies.size() == 3 * static_cast<size_t>(n) &&
            r.member_forces.size() == 9 * static_cast<size_t>(n) && r.member_virials.size() == 27,
        "committee: member outputs of K x the usual sizes");
  for (long k = 0; k < K; ++k) {
    const std::string tag = "committee member " + std::to_string(k);
    check_close(r.member_energies[k] + m.energy_offset(), energies[k], 1e-12, tag + " total energy");
    for (long i = 0; i < n; ++i)
      check_close(r.member_atom_energies[k * n + i], atom_energies[k * n + i], 1e-12, tag + " atom energy");
    for (long q = 0; q < 3 * n; ++q) check_close(r.member_forces[k * 3 * n + q], forces[k * 3 * n + q], 1e-12, tag + " forces");
    for (int q = 0; q < 9; ++q) check_close(r.member_virials[9 * k + q], virials[9 * k + q], 1e-12, tag + " virial");
  }
  auto mean = [&](const std::vector<double> &v, long per, long q) {
    double s = 0.0;
    for (long k = 0; k < K; ++k) s += v[k * per + q];
    return s / static_cast<double>(K);
  };
  check_close(r.energy + m.energy_offset(), mean(energies, 1, 0), 1e-12, "committee energy: the members' mean");
  for (long q = 0; q < 3 * n; ++q) check_close(r.forces[q], mean(forces, 3 * n, q), 1e-12, "committee forces: mean");
  for (int q = 0; q < 9; ++q) check_close(r.virial[q], mean(virials, 9, q), 1e-12, "committee virial: mean");

  // a rank without local atoms: zero members of the right sizes
  equiformer::Result r0 = m.compute(c.species, c.src, c.dst, c.vec, 0, false);
  bool zero = r0.member_energies.size() == 3 && r0.member_forces.size() == 9 * static_cast<size_t>(n) &&
              r0.member_atom_energies.size() == 3 * static_cast<size_t>(n) && r0.member_virials.size() == 27;
  for (double v : r0.member_forces) zero = zero && v == 0.0;
  check(zero, "committee, n_local = 0: zero member outputs of the right sizes");
  // a single model: no member outputs
  equiformer::Result r1 = single.compute(c.species, c.src, c.dst, c.vec, c.n_local, false);
  check(r1.member_energies.empty() && r1.member_forces.empty() && r1.member_virials.empty() &&
            r1.member_atom_energies.empty(),
        "a single model gives no member outputs");

  // no per-layer protocol for a committee
  check_throws([&] { m.layer_feature_sizes(); }, "committee of 3 models", "layer sizes of a committee");
  CountingExchange ex;
  check_throws([&] {
    m.compute_layered(c.n, c.species.data(), c.e, c.src.data(), c.dst.data(), c.vec.data(), c.n, false, ex, r);
  }, "mode ghost or mode map", "per-layer evaluation of a committee");
  // committee_size the forward does not honour, and an impossible one
  equiformer::Model liar(dir + "/committee_without_members.pt", "cpu");
  check(liar.committee_size() == 2, "committee_size read from the metadata");
  check_throws([&] { liar.compute(c.species, c.src, c.dst, c.vec, c.n_local); }, "lacks 'member_energies'",
               "a committee file without member outputs");
  check_throws([&] { equiformer::Model(dir + "/committee_of_none.pt"); }, "committee_size must be at least 1",
               "committee_size 0");
}

// Where glibc serves a large block from, and what it keeps after the block is freed:
// {bytes it took in mmapped regions, bytes left in its heap after the free}. {-1, -1} where
// mallinfo2 does not exist.
std::pair<long, long> large_block_accounting(size_t bytes)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  const struct mallinfo2 before = mallinfo2();
  char *p = static_cast<char *>(std::malloc(bytes));
  if (p == nullptr) return {-1, -1};
  std::memset(p, 1, bytes);
  const struct mallinfo2 during = mallinfo2();
  volatile char sink = p[bytes / 2];
  (void)sink;
  std::free(p);
  const struct mallinfo2 after = mallinfo2();
  return {long(during.hblkhd) - long(before.hblkhd), long(after.arena)};
#else
  (void)bytes;
  return {-1, -1};
#endif
}

}  // namespace

int main(int argc, char **argv)
{
  if (argc != 2) {
    std::cerr << "usage: test_runtime DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  try {
    auto cases = read_cases(dir + "/graphs.txt");
    check(cases.size() == 4, "four graphs read");

    equiformer::Model m64(dir + "/pair64.pt", "cpu");
    check_close(m64.cutoff(), 3.0, 0, "cutoff");
    check(m64.num_layers() == 1, "num_layers");
    check_close(m64.interaction_range(), 3.0, 0, "interaction_range");
    check((m64.species_symbols() == std::vector<std::string>{"H", "C", "O", "Cu"}), "species symbols");
    check((m64.atomic_numbers() == std::vector<int>{1, 6, 8, 29}), "atomic numbers");
    check(m64.length_unit() == "Angstrom" && m64.energy_unit() == "eV", "units");
    check(m64.dtype() == "float64", "dtype");
    check(m64.energy_offset() == 0.0, "energy offset");
    check(m64.device() == "cpu", "device");
    check(!m64.has_layer_methods(), "the pair model exports no layer methods");
    check(m64.species_index("O") == 2 && m64.species_index("Cu") == 3 && m64.species_index("N") == -1, "species_index");
    check(m64.metadata("format") == "equiformer-model" && m64.metadata("no-such-key").empty(), "metadata");
    {
      // loading a model keeps freed host memory for the next call (src/host_memory.cpp): a
      // block of 256 MB comes from the heap, not from an mmap of its own, and stays in the
      // heap after it is freed (glibc's default maps it and unmaps it on free)
      const size_t bytes = size_t(256) << 20;
      const auto [mapped, heap_after] = large_block_accounting(bytes);
      if (mapped >= 0) {
        if (mapped != 0 || heap_after < long(bytes))
          std::cerr << "  256 MB block: " << mapped << " bytes mmapped, heap " << heap_after << " bytes after free\n";
        check(mapped == 0, "a large block is served from the heap");
        check(heap_after >= long(bytes), "the heap keeps a freed large block");
      }
    }
    check_close(m64.min_distance(), 0.5, 0, "min_distance: 0.5 Angstrom when the file does not say");
    for (const auto &c : cases) check_case(m64, c, 1e-12);
    {
      // the shortest edge of each evaluation, for the engines' close-atoms warning
      const Case &c = cases[0];
      double shortest = 1e300;
      for (long e = 0; e < c.e; ++e)
        shortest = std::min(shortest, std::sqrt(c.vec[3 * e] * c.vec[3 * e] + c.vec[3 * e + 1] * c.vec[3 * e + 1] +
                                                c.vec[3 * e + 2] * c.vec[3 * e + 2]));
      check_close(m64.compute(c.species, c.src, c.dst, c.vec, c.n_local).min_distance, shortest, 1e-15,
                  "Result::min_distance is the shortest edge");
      check(std::isinf(m64.compute({0, 1}, {}, {}, {}, 2).min_distance), "no edges: min_distance is infinite");
    }

    equiformer::Model m32(dir + "/pair32.pt", "cpu");
    check(m32.dtype() == "float32", "float32 dtype");
    for (const auto &c : cases) check_case(m32, c, 2e-5);

    equiformer::Model mu(dir + "/pair_units.pt", "auto");
    check(mu.length_unit() == "nm" && mu.energy_unit() == "kcal/mol", "units of the nm/kcal model");
    check(mu.energy_offset() == -12.5 && mu.num_layers() == 2, "offset and layers");
    check_close(mu.interaction_range(), 0.6, 1e-15, "interaction range 2 x 0.3 nm");
    check(mu.device() == (equiformer::Model::cuda_available() ? "cuda:0" : "cpu"), "auto device");
    check_close(mu.min_distance(), 0.05, 1e-15, "default min_distance in nm");

    // ranks of a parallel run compare fingerprints: equal for the same file, not for another
    check(m64.fingerprint() == equiformer::Model(dir + "/pair64.pt").fingerprint(), "same file, same fingerprint");
    check(m64.fingerprint() != m32.fingerprint() && m64.fingerprint() != mu.fingerprint(),
          "other files, other fingerprints");

    // a rank with no local atom
    const Case &mol = cases[1];
    equiformer::Result r0 = m64.compute(mol.species, mol.src, mol.dst, mol.vec, 0, true);
    bool zero = r0.energy == 0.0;
    for (double v : r0.forces) zero = zero && v == 0.0;
    check(zero, "n_local = 0 gives zero energy and forces");
    equiformer::Result rempty = m64.compute({}, {}, {}, {}, 0, true);
    check(rempty.forces.empty() && rempty.energy == 0.0, "empty system");

    // layer-by-layer evaluation (per-layer exchange)
    equiformer::Model mp(dir + "/mp.pt", "cpu");
    check(mp.has_layer_methods(), "the message-passing model exports layer methods");
    check((mp.layer_feature_sizes() == std::vector<int64_t>{1, 1, 1}), "layer feature sizes");
    for (const auto &c : cases) check_layered(mp, c, 1e-12);
    check_boundary_rows(mp, cases[0]);  // periodic: atoms see their own images
    check_boundary_rows(mp, cases[1]);  // molecule
    {
      // every node local, an empty boundary set: nothing crosses, same answer
      const Case &c = cases[0];
      const std::vector<int64_t> none;
      ImageExchange ex;
      ex.n_local = c.n;
      ex.boundary = &none;
      ImageExchange all;
      all.n_local = c.n;
      equiformer::Result r, ref;
      mp.compute_layered(c.n, c.species.data(), c.e, c.src.data(), c.dst.data(), c.vec.data(), c.n, false, all, ref);
      mp.compute_layered(c.n, c.species.data(), c.e, c.src.data(), c.dst.data(), c.vec.data(), c.n, false, ex, r);
      check(ex.rows_to_host == 0 && ex.rows_to_device == 0, "empty boundary set, no ghosts: no rows cross");
      check(r.energy == ref.energy && r.forces == ref.forces && r.virial == ref.virial,
            "empty boundary set, no ghosts: the same result as whole copies");
      // no local node (a rank without atoms): every exchange still made, zero result
      ImageExchange ex0;
      ex0.boundary = &none;
      mp.compute_layered(c.n, c.species.data(), c.e, c.src.data(), c.dst.data(), c.vec.data(), 0, false, ex0, r);
      check(r.energy == 0.0 && ex0.rows_to_host == 0 && ex0.rows_to_device == 0, "n_local = 0 with a boundary set");
      // a boundary set that is not strictly increasing local rows is refused
      ImageExchange bad;
      bad.n_local = c.n;
      const std::vector<int64_t> outside{0, c.n}, unsorted{2, 1};
      for (const auto *b : {&outside, &unsorted}) {
        bad.boundary = b;
        check_throws([&] {
          mp.compute_layered(c.n, c.species.data(), c.e, c.src.data(), c.dst.data(), c.vec.data(), c.n, false, bad, r);
        }, "boundary rows", "a bad boundary set");
      }
    }
    {
      CountingExchange ex;
      equiformer::Result r;
      mp.compute_layered(0, nullptr, 0, nullptr, nullptr, nullptr, 0, false, ex, r);
      check(ex.forwards == 3 && ex.reverses == 3 && r.energy == 0.0, "no atoms: still every exchange");
    }
    check_throws([&] { m64.layer_feature_sizes(); }, "does not export the per-layer methods", "layer sizes of a pair model");

    // unit conversions
    check_close(equiformer::energy_conversion("eV", "kcal/mol"), 23.060547830619026, 1e-15, "eV -> kcal/mol");
    check_close(equiformer::energy_conversion("eV", "kJ/mol"), 96.48533212331002, 1e-15, "eV -> kJ/mol");
    check_close(equiformer::energy_conversion("kcal/mol", "kJ/mol"), 4.184, 1e-15, "kcal -> kJ");
    check_close(equiformer::length_conversion("nm", "Angstrom"), 10.0, 0, "nm -> Angstrom");
    check_throws([] { equiformer::energy_conversion("hartree", "eV"); }, "unknown energy unit", "bad energy unit");

    // error paths
    check_throws([&] { equiformer::Model(dir + "/does_not_exist.pt"); }, "does not exist", "missing file");
    check_throws([&] { equiformer::Model(dir + "/garbage.pt"); }, "not an exported Equiformer model", "random bytes");
    check_throws([&] { equiformer::Model(dir + "/checkpoint.pt"); }, "equiformer-export", "a torch.save checkpoint");
    check_throws([&] { equiformer::Model(dir + "/plain_torchscript.pt"); },
                 "not an exported Equiformer model", "TorchScript without metadata");
    check_throws([&] { equiformer::Model(dir + "/future_version.pt"); }, "format version 2", "future version");
    check_throws([&] { equiformer::Model(dir + "/bfloat16.pt"); }, "supports float32 and float64", "bfloat16 dtype");
    check_throws([&] { equiformer::Model(dir + "/no_cutoff.pt"); }, "lacks the 'cutoff' metadata", "missing cutoff");
    check_throws([&] { equiformer::Model(dir + "/cutoff_not_a_number.pt"); },
                 "metadata 'cutoff' is not a number ('1.5x')", "cutoff not a number");
    check_throws([&] { equiformer::Model(dir + "/layers_not_an_integer.pt"); },
                 "metadata 'num_layers' is not an integer ('2.5')", "num_layers not an integer");
    // libtorch does not check the archive's checksums: a flipped bit used to load silently
    check_throws([&] { equiformer::Model(dir + "/flipped_data.pt"); }, "does not match its contents",
                 "a bit flipped in a tensor");
    check_throws([&] { equiformer::Model(dir + "/flipped_code.pt"); }, "is damaged", "a bit flipped in deflated code");
    check_throws([&] { equiformer::Model(dir + "/truncated.pt"); }, "truncated", "a truncated file");
    check_throws([&] { equiformer::Model(dir + "/pair64.pt", "tpu"); }, "unknown device", "unknown device");
    if (!equiformer::Model::cuda_available()) {
      check_throws([&] { equiformer::Model(dir + "/pair64.pt", "cuda"); }, "no CUDA GPU", "cuda without a GPU");
      check_throws([&] { equiformer::Model(dir + "/pair64.pt", "cuda:1"); }, "use device cpu", "cuda:1 without a GPU");
    }
    check_throws([&] { m64.compute({0, 7}, {0}, {1}, {1.0, 0.0, 0.0}, 2); }, "species index 7", "bad species");
    check_throws([&] { m64.compute({0, 1}, {0}, {2}, {1.0, 0.0, 0.0}, 2); }, "outside", "edge to a missing atom");
    check_throws([&] { m64.compute({0, 1}, {0}, {1}, {1.0, 0.0}, 2); }, "inconsistent", "short edge_vectors");
    check_throws([&] { m64.compute({0, 1}, {0}, {1}, {1.0, 0.0, 0.0}, 3); }, "n_local", "n_local too large");

    check_committee(dir, cases[0], m64);

    // the model keeps working after errors and can be moved
    equiformer::Model moved = std::move(m64);
    check_case(moved, cases[0], 1e-12);
  } catch (const std::exception &e) {
    std::cerr << "FAIL: unexpected exception: " << e.what() << "\n";
    return 1;
  }
  return equiformer_test::report();
}
