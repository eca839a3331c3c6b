/* ----------------------------------------------------------------------
   pair_style equiformer (see pair_equiformer.h and docs/lammps.md)
------------------------------------------------------------------------- */

#include "pair_equiformer.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include "equiformer/runtime.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mpi.h>
#include <utility>

using namespace LAMMPS_NS;

namespace {
const char *mode_name(int mode)
{
  switch (mode) {
    case PairEquiformer::MODE_MAP:
      return "map (one rank: ghost atoms mapped onto their owners, ghost cutoff = cutoff + skin)";
    case PairEquiformer::MODE_GHOST:
      return "ghost (ghost atoms are graph nodes, ghost cutoff = interaction range + skin)";
    case PairEquiformer::MODE_LAYER:
      return "layer (node features exchanged after every layer, ghost cutoff = cutoff + skin)";
    default:
      return "auto";
  }
}
}    // namespace

/* ---------------------------------------------------------------------- */

PairEquiformer::PairEquiformer(LAMMPS *lmp) :
    Pair(lmp), device_request("auto"), mode_request(MODE_AUTO), mode(MODE_AUTO), cutoff_lmp(0.0),
    range_lmp(0.0), length_to_model(1.0), energy_to_lmp(1.0), offset_lmp(0.0), logged(false), warned_close(false),
    n_local_nodes(0), result(new equiformer::Result), fold_vatom(0), comm_width(0), comm_what(COMM_FOLD),
    max_width(0), traffic_reported(false), deviation(false), devi_every(1), devi_atomic(false), devi_append(false),
    devi_fp(nullptr), devi_opened(false), devi_last_step(-1), devi{}
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  unit_convert_flag = 0;
  comm_reverse = 9;    // newton off, ghost mode: 3 force + 6 virial components per ghost
  comm_forward = 0;    // layer mode: set in init_style to the widest node feature
  // always valid: a compute pair created while the deviation keyword was on reads zeros after
  // pair_style is re-issued without it
  pvector = devi;
}

namespace {
// the runtime's view of the pair style's per-layer communication
class Exchange : public equiformer::LayerExchange {
 public:
  explicit Exchange(PairEquiformer *pair) : pair_(pair) {}
  void forward(double *x, int64_t n, int64_t F) override { pair_->layer_forward(x, n, F); }
  void reverse(double *g, int64_t n, int64_t F) override { pair_->layer_reverse(g, n, F); }
  const std::vector<int64_t> *boundary_rows() override { return pair_->layer_boundary_rows(); }

 private:
  PairEquiformer *pair_;
};
}    // namespace

PairEquiformer::~PairEquiformer()
{
  if (devi_fp) fclose(devi_fp);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairEquiformer::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      setflag[i][j] = 0;
      cutghost[i][j] = 0.0;
    }
}

/* ----------------------------------------------------------------------
   pair_style equiformer [device cpu|cuda|auto] [mode auto|map|ghost|layer]
                         [deviation [every N file FILE] [atomic yes|no] [append yes|no]]
------------------------------------------------------------------------- */

namespace {
constexpr const char *kSyntax = "pair_style equiformer [device cpu|cuda|auto] [mode auto|map|ghost|layer] "
                                "[deviation [every N file FILE] [atomic yes|no] [append yes|no]]";
}    // namespace

void PairEquiformer::settings(int narg, char **arg)
{
  // a repeated pair_style command starts from the defaults of the deviation output (and a new file)
  deviation = false;
  devi_every = 1;
  devi_file.clear();
  devi_atomic = devi_append = false;
  bool every_given = false;
  if (devi_fp) fclose(devi_fp);
  devi_fp = nullptr;
  devi_opened = false;
  devi_last_step = -1;
  logged = false;    // the next init logs the new settings

  int iarg = 0;
  while (iarg < narg) {
    std::string key = arg[iarg];
    if (key == "deviation") {    // a flag, followed by its own keywords
      deviation = true;
      iarg++;
      continue;
    }
    if (iarg + 1 >= narg)
      error->all(FLERR, "pair_style equiformer: keyword {} needs a value; syntax: {}", key, kSyntax);
    std::string value = arg[iarg + 1];
    const bool devi_key = key == "every" || key == "file" || key == "atomic" || key == "append";
    if (devi_key && !deviation)
      error->all(FLERR, "pair_style equiformer: keyword {} belongs to the deviation output and must follow the "
                 "keyword deviation; syntax: {}", key, kSyntax);
    if (key == "device") {
      if (value != "cpu" && value != "cuda" && value != "auto")
        error->all(FLERR, "pair_style equiformer: device must be cpu, cuda or auto, not {}", value);
      device_request = value;
    } else if (key == "mode") {
      if (value == "auto") mode_request = MODE_AUTO;
      else if (value == "map") mode_request = MODE_MAP;
      else if (value == "ghost") mode_request = MODE_GHOST;
      else if (value == "layer") mode_request = MODE_LAYER;
      else
        error->all(FLERR, "pair_style equiformer: mode must be auto, map, ghost or layer, not {}", value);
    } else if (key == "every") {
      devi_every = utils::bnumeric(FLERR, value, false, lmp);
      if (devi_every < 1)
        error->all(FLERR, "pair_style equiformer: deviation every N needs N >= 1 (steps between lines), not {}",
                   value);
      every_given = true;
    } else if (key == "file") {
      devi_file = value;
    } else if (key == "atomic") {
      devi_atomic = utils::logical(FLERR, value, false, lmp) != 0;
    } else if (key == "append") {
      devi_append = utils::logical(FLERR, value, false, lmp) != 0;
    } else {
      error->all(FLERR, "pair_style equiformer: unknown keyword {}; syntax: {}", key, kSyntax);
    }
    iarg += 2;
  }
  // without a file the deviations are only computed (compute pair, fix pair): the file's
  // options would silently do nothing
  if (devi_file.empty() && (every_given || devi_atomic || devi_append))
    error->all(FLERR, "pair_style equiformer: deviation every/atomic/append need file FILE (without a file the "
               "deviations are only available to compute pair and fix pair); syntax: {}", kSyntax);

  // compute pair reads nextra when it is created: the 7 DP-GEN columns, see compute_deviation()
  nextra = deviation ? 7 : 0;
  std::fill(devi, devi + 7, 0.0);
}

/* ----------------------------------------------------------------------
   one GPU per node-local rank: local rank modulo the number of visible GPUs
------------------------------------------------------------------------- */

std::string PairEquiformer::device_for_this_rank()
{
  if (device_request == "cpu") return "cpu";
  bool have_cuda = equiformer::Model::cuda_available();
  if (device_request == "auto" && !have_cuda) return "cpu";
  if (!have_cuda) return "cuda";    // the runtime refuses it with a clear message
  MPI_Comm node;
  int local_rank = 0;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  int ngpu = std::max(1, equiformer::Model::cuda_device_count());
  return "cuda:" + std::to_string(local_rank % ngpu);
}

/* ----------------------------------------------------------------------
   every rank passes its own outcome (empty: success); when any rank failed, all stop
   together with the first failing rank's message, printed once (never a hang or a bare
   MPI abort)
------------------------------------------------------------------------- */

void PairEquiformer::stop_together(const std::string &failure)
{
  int mine = failure.empty() ? comm->nprocs : comm->me, first = comm->nprocs;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, world);
  if (first == comm->nprocs) return;
  const std::string message = text_of_rank(failure, first);
  if (comm->nprocs > 1) error->all(FLERR, "pair equiformer (on MPI rank {}): {}", first, message);
  error->all(FLERR, "pair equiformer: {}", message);
}

/* ----------------------------------------------------------------------
   TEXT as given on rank ROOT, on every rank
------------------------------------------------------------------------- */

std::string PairEquiformer::text_of_rank(const std::string &text, int root)
{
  int len = (comm->me == root) ? static_cast<int>(text.size()) : 0;
  MPI_Bcast(&len, 1, MPI_INT, root, world);
  std::vector<char> buf(text.begin(), text.end());
  buf.resize(len);
  MPI_Bcast(buf.data(), len, MPI_CHAR, root, world);
  return std::string(buf.begin(), buf.end());
}

/* ----------------------------------------------------------------------
   the ranks must have loaded the same model (one path can name different files on
   different nodes, or a variable can make the path depend on the rank)
------------------------------------------------------------------------- */

void PairEquiformer::check_same_model()
{
  uint64_t mine = model->fingerprint(), first = mine;
  MPI_Bcast(&first, 1, MPI_UINT64_T, 0, world);
  int odd = (mine != first) ? comm->me : comm->nprocs, which = comm->nprocs;
  MPI_Allreduce(&odd, &which, 1, MPI_INT, MPI_MIN, world);
  if (which == comm->nprocs) return;
  const std::string other = text_of_rank(model_file, which);
  error->all(FLERR, "pair equiformer: MPI ranks 0 and {} loaded different model files ({} on rank 0, {} on rank "
             "{}); every rank must read the same file: check that the file is identical on every node, and that "
             "the path does not depend on the rank", which, model_file, other, which);
}

/* ----------------------------------------------------------------------
   pair_coeff * * MODEL.pt SYMBOL|NULL ... (one per atom type)
------------------------------------------------------------------------- */

void PairEquiformer::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 3 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for equiformer must be: pair_coeff * * MODEL.pt SYMBOL ... "
               "(one chemical symbol or NULL per atom type)");
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff * * {} needs one chemical symbol (or NULL) per atom type: "
               "{} types, got {}", arg[2], ntypes, narg - 3);

  model_file = arg[2];
  std::string device = device_for_this_rank();
  std::string failure;
  try {
    model.reset(new equiformer::Model(model_file, device));
  } catch (std::exception &e) {
    failure = e.what();
  }
  stop_together(failure);
  check_same_model();
  check_deviation_model();

  type2species.assign(ntypes + 1, -1);
  type2symbol.assign(ntypes + 1, "NULL");
  std::string known;
  for (const auto &s : model->species_symbols()) known += " " + s;
  for (int t = 1; t <= ntypes; t++) {
    std::string sym = arg[2 + t];
    type2symbol[t] = sym;
    if (sym == "NULL") continue;
    int k = model->species_index(sym);
    if (k < 0)
      error->all(FLERR, "pair_coeff: model {} has no species {} (atom type {}); it knows:{}. Map "
                 "that type to NULL and give it another pair style (pair_style hybrid/overlay), "
                 "or use a model trained on {}", model_file, sym, t, known, sym);
    type2species[t] = k;
  }
  // as the only pair style every type needs a species (NULL is for hybrid/overlay)
  if (force->pair_style && strcmp(force->pair_style, "equiformer") == 0)
    for (int t = 1; t <= ntypes; t++)
      if (type2species[t] < 0)
        error->all(FLERR, "pair_coeff: atom type {} is NULL in pair_coeff but pair_style equiformer is the only "
                   "pair style; map every type to a species, or use pair_style hybrid/overlay equiformer ... "
                   "with another style for the NULL types", t);
  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (type2species[i] >= 0 && type2species[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_coeff: every atom type is NULL; map at least one type to a species");
  logged = false;
}

/* ----------------------------------------------------------------------
   the deviation keyword needs a committee file; every rank loaded the same file
   (check_same_model), so every rank stops here together
------------------------------------------------------------------------- */

void PairEquiformer::check_deviation_model()
{
  if (deviation && model->committee_size() < 2)
    error->all(FLERR, "pair_style equiformer deviation needs a committee file (several models in one file, "
               "metadata committee_size > 1); {} is a single model: export the members into one file with "
               "equiformer-export a.pt b.pt ... committee.pt, or drop the deviation keyword", model_file);
}

/* ---------------------------------------------------------------------- */

void PairEquiformer::init_style()
{
  if (!model) error->all(FLERR, "pair equiformer: no model loaded; add pair_coeff * * MODEL.pt SYMBOL ...");
  check_deviation_model();    // pair_style may have been re-issued after pair_coeff
  warned_close = false;  // the close-atoms warning: once per run
  if (atom->tag_enable == 0) error->all(FLERR, "pair equiformer needs atom IDs (atom_modify id yes)");

  std::string units = update->unit_style;
  std::string lmp_energy;
  if (units == "metal")
    lmp_energy = "eV";
  else if (units == "real")
    lmp_energy = "kcal/mol";
  else
    error->all(FLERR, "pair equiformer supports units metal (eV, Angstrom) and real (kcal/mol, "
               "Angstrom), not units {}; change the units command of the input", units);
  length_to_model = equiformer::length_conversion("Angstrom", model->length_unit());
  energy_to_lmp = equiformer::energy_conversion(model->energy_unit(), lmp_energy);
  cutoff_lmp = model->cutoff() / length_to_model;
  // the receptive field: metadata interaction_range, but with the layer methods of a
  // TorchScript file (any model: the analytic test models too) each of embed, the num_layers
  // blocks and readout may look one cutoff further (e.g. Equiformer's edge-degree embedding
  // and attention head): (num_layers + 2) x cutoff at most. A package is always an Equiformer,
  // whose interaction_range is exact.
  double range_model = model->interaction_range();
  if (model->has_layer_methods() && !model->is_package())
    range_model = std::max(range_model, (model->num_layers() + 2) * model->cutoff());
  range_lmp = range_model / length_to_model;
  offset_lmp = model->energy_offset() * energy_to_lmp;

  // libtorch CPU threads = LAMMPS' OpenMP threads per rank (OMP_NUM_THREADS, -pk omp N)
  equiformer::Model::set_num_threads(comm->nthreads);

  const int committee = model->committee_size();
  mode = mode_request;
  if (mode == MODE_AUTO) {
    if (comm->nprocs == 1)
      mode = MODE_MAP;
    else
      mode = (committee == 1 && model->num_layers() > 1 && model->has_layer_methods()) ? MODE_LAYER : MODE_GHOST;
  }
  if (mode == MODE_MAP && comm->nprocs > 1)
    error->all(FLERR, "pair_style equiformer mode map works on one MPI rank only ({} ranks); use "
               "mode layer, mode ghost or mode auto", comm->nprocs);
  if (mode == MODE_LAYER && committee > 1)
    error->all(FLERR, "pair_style equiformer mode layer is not available for a committee ({} holds {} models and "
               "no per-layer methods): use mode ghost or mode map (mode auto picks ghost on several ranks)",
               model_file, committee);
  if (mode == MODE_LAYER && model->is_package() && !model->has_layer_methods())
    error->all(FLERR, "pair_style equiformer mode layer needs the layer entries of a .pt2 package, which {} was "
               "exported without (equiformer-export --chunked-above -1): re-export it without that option, or use "
               "mode ghost or map (mode auto picks ghost on several ranks)", model_file);
  if (mode == MODE_LAYER && !model->has_layer_methods())
    error->all(FLERR, "pair_style equiformer mode layer needs a model that exports the per-layer methods; "
               "{} does not (re-export it with equiformer-export), use mode ghost or mode auto", model_file);

  // layer mode: the node features cross subdomains once per layer, max_width doubles per atom
  comm_forward = 0;
  comm_reverse = 9;
  max_width = 0;
  traffic_reported = false;
  if (mode == MODE_LAYER) {
    std::string failure;
    try {
      for (int64_t w : model->layer_feature_sizes()) max_width = std::max<int>(max_width, static_cast<int>(w));
    } catch (std::exception &e) {
      failure = e.what();
    }
    stop_together(failure);
    comm_forward = max_width;
    comm_reverse = std::max(9, max_width);
  }
  // ghost mode, deviations: the members' forces on ghost atoms go back to their owners
  if (deviation && mode == MODE_GHOST) comm_reverse = std::max(comm_reverse, 3 * committee);
  // LAMMPS sizes its reverse buffers with comm_reverse_off only under newton off, where the
  // pair style folds ghost forces (ghost and layer modes) and features (layer mode) itself
  comm_reverse_off = (mode == MODE_MAP) ? 0 : comm_reverse;

  // ghost mode: every atom within the interaction range (range_lmp) of a local atom must be a
  // ghost, for the whole life of a neighbor list (+ skin); raise the ghost cutoff when it is shorter
  if (mode == MODE_GHOST) {
    if (comm->mode != Comm::SINGLE)
      error->all(FLERR, "pair equiformer mode ghost needs comm_modify mode single (a single ghost cutoff)");
    double need = range_lmp + neighbor->skin;
    if (comm->cutghostuser < need) {
      if (comm->me == 0)
        utils::logmesg(lmp, "pair equiformer: ghost cutoff raised from {:.4g} to {:.4g} (receptive field + skin)\n",
                       comm->cutghostuser, need);
      comm->cutghostuser = need;
    }
  }
  open_deviation_file();
  ghostneigh = (mode == MODE_GHOST && model->num_layers() > 1) ? 1 : 0;
  int flags = NeighConst::REQ_FULL;
  if (ghostneigh) flags |= NeighConst::REQ_GHOST;
  neighbor->add_request(this, flags);

  if (comm->me == 0 && !logged) {
    std::string map;
    for (int t = 1; t <= atom->ntypes; t++) map += " " + type2symbol[t];
    utils::logmesg(lmp,
                   "pair equiformer: model {}{}\n"
                   "  species:{} | type map:{}\n"
                   "  cutoff {} {} ({:.6g} Angstrom), {} layers, interaction range {:.6g} Angstrom\n"
                   "  model units {} / {}, LAMMPS units {} (energy x {:.12g}), dtype {}, energy offset {}\n"
                   "  device {}, {} MPI rank(s) x {} libtorch thread(s), mode {}, newton pair {}\n{}{}",
                   model_file, model->is_package() ? " (compiled .pt2 package)" : "",
                   [&] { std::string s; for (auto &x : model->species_symbols()) s += " " + x; return s; }(),
                   map, model->cutoff(), model->length_unit(), cutoff_lmp, model->num_layers(), range_lmp,
                   model->energy_unit(), model->length_unit(), units, energy_to_lmp, model->dtype(),
                   model->energy_offset(), model->device(), comm->nprocs, equiformer::Model::num_threads(), mode_name(mode),
                   force->newton_pair ? "on" : "off",
                   [&] {
                     if (mode != MODE_LAYER) return std::string();
                     std::string w;
                     for (auto v : model->layer_feature_sizes()) w += " " + std::to_string(v);
                     return "  layer exchange: node features of" + w + " values per atom (embed, blocks)\n";
                   }(),
                   [&] {
                     if (committee == 1) return std::string();
                     std::string c = fmt::format("  committee of {} models: the mean drives the dynamics", committee);
                     if (!deviation) return c + " (keyword deviation: the members' spread)\n";
                     c += "; deviations every step (compute pair, fix pair force_deviation)";
                     if (!devi_file.empty())
                       c += fmt::format(", written to {} every {} steps{}{}", devi_file, devi_every,
                                        devi_atomic ? " with per-atom columns" : "", devi_append ? " (appended)" : "");
                     return c + "\n";
                   }());
    logged = true;
  }
}

/* ---------------------------------------------------------------------- */

double PairEquiformer::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR, "pair equiformer: atom type {} or {} is NULL in pair_coeff and no other pair "
               "style covers it; map every type to a species, or use pair_style hybrid/overlay", i, j);
  cutghost[i][j] = cutghost[j][i] = cutoff_lmp;
  return cutoff_lmp;
}

/* ----------------------------------------------------------------------
   both one-cutoff graphs: local atoms of mapped types are the first nodes; tag2local
   finds a ghost's local owner (images of local atoms). Returns the largest local tag.
------------------------------------------------------------------------- */

tagint PairEquiformer::add_local_nodes()
{
  const int nlocal = atom->nlocal;
  const int *type = atom->type;
  const tagint *tag = atom->tag;

  tagint maxtag = 0;
  for (int i = 0; i < nlocal; i++) maxtag = std::max(maxtag, tag[i]);
  tag2local.assign(maxtag + 1, -1);
  for (int i = 0; i < nlocal; i++) tag2local[tag[i]] = i;

  node_of.assign(nlocal + atom->nghost, -1);
  atom_of.clear();
  species.clear();
  for (int i = 0; i < nlocal; i++) {
    int s = type2species[type[i]];
    if (s < 0) continue;
    node_of[i] = static_cast<int>(atom_of.size());
    atom_of.push_back(i);
    species.push_back(s);
  }
  n_local_nodes = static_cast<int64_t>(atom_of.size());
  return maxtag;
}

/* ----------------------------------------------------------------------
   graph on one rank: nodes are the local atoms, a ghost neighbour is its owner
   (edge vector from the ghost position: it carries the periodic shift)
------------------------------------------------------------------------- */

void PairEquiformer::build_graph_map()
{
  map_ghosts_to_owners(true);
}

/* ----------------------------------------------------------------------
   graph with ghost nodes: local atoms first, then ghosts (any rank count)
------------------------------------------------------------------------- */

void PairEquiformer::build_graph_ghost()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int *type = atom->type;
  node_of.assign(nall, -1);
  atom_of.clear();
  species.clear();
  for (int i = 0; i < nall; i++) {
    if (i == nlocal) n_local_nodes = static_cast<int64_t>(atom_of.size());
    int s = type2species[type[i]];
    if (s < 0) continue;
    node_of[i] = static_cast<int>(atom_of.size());
    atom_of.push_back(i);
    species.push_back(s);
  }
  if (nall == nlocal) n_local_nodes = static_cast<int64_t>(atom_of.size());
}

/* ----------------------------------------------------------------------
   layer mode: local atoms first; a ghost that is an image of a local atom is mapped onto
   it (as in map mode); other ghosts become nodes (-2 here) when an edge into a local
   centre uses them (created in compute())
------------------------------------------------------------------------- */

void PairEquiformer::build_graph_layer()
{
  map_ghosts_to_owners(false);
}

/* ----------------------------------------------------------------------
   map and layer modes: local nodes (add_local_nodes()), then every ghost of a mapped type
   takes the node of its local owner (found by atom ID). A ghost without one is an error
   (require_owner: map mode, one rank) or is marked -2 (layer mode: a node of its own if an
   edge uses it)
------------------------------------------------------------------------- */

void PairEquiformer::map_ghosts_to_owners(bool require_owner)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const tagint maxtag = add_local_nodes();
  for (int j = nlocal; j < nall; j++) {
    if (type2species[type[j]] < 0) continue;
    const tagint t = tag[j];
    const int owner = (t >= 0 && t <= maxtag) ? tag2local[t] : -1;
    if (owner >= 0)
      node_of[j] = node_of[owner];
    else if (require_owner)
      error->one(FLERR, "pair equiformer: ghost atom ID {} has no local owner on this single rank", t);
    else
      node_of[j] = -2;
  }
}

/* ----------------------------------------------------------------------
   layer mode: the local nodes whose node features another rank reads (boundary rows, see
   compute()); only their rows cross from the model's device to the host in each layer
------------------------------------------------------------------------- */

const std::vector<int64_t> *PairEquiformer::layer_boundary_rows() const
{
  return &boundary_nodes;
}

/* ---------------------------------------------------------------------- */

void PairEquiformer::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  double **x = atom->x;

  if (mode == MODE_MAP)
    build_graph_map();
  else if (mode == MODE_LAYER)
    build_graph_layer();
  else
    build_graph_ghost();

  // edges j -> i within the cutoff; ghost centres only when messages must travel further
  src.clear();
  dst.clear();
  vec.clear();
  const double cutsq_lmp = cutoff_lmp * cutoff_lmp;
  // layer mode, boundary rows: local atom i is within rc of atom a of another rank exactly
  // when a's image is a ghost neighbour of i here (the distance is symmetric, both ranks hold
  // the rc + skin shell), so i has an edge from a ghost node here exactly when that rank has
  // a ghost node of i, and reads i's row. A relative margin on rc^2 covers the rounding of
  // the two ranks' image positions: the set may hold an atom too many, never one too few.
  const double cutsq_margin = cutsq_lmp * (1.0 + 1e-8);
  const int nlocal = atom->nlocal;
  if (mode == MODE_LAYER) boundary_flag.assign(n_local_nodes, 0);
  const int ncentres = list->inum + (ghostneigh ? list->gnum : 0);
  for (int ii = 0; ii < ncentres; ii++) {
    const int i = list->ilist[ii];
    const int ni = node_of[i];
    if (ni < 0) continue;
    const int *jlist = list->firstneigh[i];
    const int jnum = list->numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      int nj = node_of[j];
      if (nj == -1) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (mode == MODE_LAYER && j >= nlocal && (nj == -2 || nj >= n_local_nodes) && rsq < cutsq_margin)
        boundary_flag[ni] = 1;    // j: a ghost owned by another rank (not an image of a local atom)
      if (rsq >= cutsq_lmp) continue;
      if (nj == -2) {    // layer mode: a ghost owned by another rank becomes a node when used
        nj = node_of[j] = static_cast<int>(atom_of.size());
        atom_of.push_back(j);
        species.push_back(type2species[atom->type[j]]);
      }
      src.push_back(nj);
      dst.push_back(ni);
      vec.push_back(dx * length_to_model);
      vec.push_back(dy * length_to_model);
      vec.push_back(dz * length_to_model);
    }
  }

  boundary_nodes.clear();
  if (mode == MODE_LAYER)
    for (int64_t k = 0; k < n_local_nodes; k++)
      if (boundary_flag[k]) boundary_nodes.push_back(k);

  int64_t rows_moved = 0;
  try {
    if (mode == MODE_LAYER) {
      Exchange exchange(this);
      model->compute_layered(static_cast<int64_t>(species.size()), species.data(), static_cast<int64_t>(src.size()),
                             src.data(), dst.data(), vec.data(), n_local_nodes, vflag_atom != 0, exchange, *result);
      rows_moved = exchange.rows_to_host + exchange.rows_to_device;
    } else {
      model->compute(static_cast<int64_t>(species.size()), species.data(), static_cast<int64_t>(src.size()),
                     src.data(), dst.data(), vec.data(), n_local_nodes, vflag_atom != 0, *result);
    }
  } catch (std::exception &e) {
    error->one(FLERR, "pair equiformer: {}", e.what());
  }
  if (mode == MODE_LAYER && !traffic_reported) report_layer_traffic(rows_moved);
  if (!warned_close) warn_close_atoms();
  apply_result(*result, eflag, vflag);
  if (deviation) {
    compute_deviation(*result);
    write_deviation();
  }
}

/* ----------------------------------------------------------------------
   layer mode, first step of a run: the node-feature rows that crossed between the model's
   device and the host (all ranks, all exchanges), against whole-matrix copies
------------------------------------------------------------------------- */

void PairEquiformer::report_layer_traffic(int64_t rows_moved)
{
  traffic_reported = true;
  const int64_t exchanges = model->num_layers() + 1;    // each forward and reverse
  double mine[3] = {static_cast<double>(rows_moved), static_cast<double>(4 * exchanges * species.size()),
                    static_cast<double>(boundary_nodes.size())};
  double all[3] = {0.0, 0.0, 0.0};
  MPI_Reduce(mine, all, 3, MPI_DOUBLE, MPI_SUM, 0, world);
  if (comm->me == 0)
    utils::logmesg(lmp, "pair equiformer: layer exchange moved {:.0f} node-feature rows between the model's device "
                   "and the host at step {} (whole copies: {:.0f}; {:.0f} boundary atoms, all ranks)\n",
                   all[0], update->ntimestep, all[1], all[2]);
}

/* ----------------------------------------------------------------------
   once per run: two atoms closer than the model is meant for (it has no repulsion built
   in, so overlapping atoms get a finite energy and no force pushing them apart)
------------------------------------------------------------------------- */

void PairEquiformer::warn_close_atoms()
{
  double mine = result->min_distance, closest = mine;
  MPI_Allreduce(&mine, &closest, 1, MPI_DOUBLE, MPI_MIN, world);
  if (!(closest < model->min_distance())) return;
  warned_close = true;
  if (comm->me == 0)
    error->warning(FLERR, "pair equiformer: two atoms are {:.4g} Angstrom apart at step {}, closer than the "
                   "{:.4g} Angstrom the model is meant for: it has no repulsion there and its energy is not "
                   "physical (atoms created on top of each other? a time step too long?); reported once",
                   closest / length_to_model, update->ntimestep, model->min_distance() / length_to_model);
}

/* ---------------------------------------------------------------------- */

void PairEquiformer::apply_result(const equiformer::Result &r, int /*eflag*/, int /*vflag*/)
{
  const int nlocal = atom->nlocal;
  double **f = atom->f;
  const double fconv = energy_to_lmp * length_to_model;    // model force -> LAMMPS force
  const double econv = energy_to_lmp;
  const bool fold = (mode != MODE_MAP && !force->newton_pair);
  if (fold) ghostbuf.assign(9 * static_cast<size_t>(atom->nghost), 0.0);

  // energy offset: offset / (atoms the model covers) on each of them
  double share = 0.0;
  if (offset_lmp != 0.0) {
    bigint mine = n_local_nodes, total = 0;
    MPI_Allreduce(&mine, &total, 1, MPI_LMP_BIGINT, MPI_SUM, world);
    if (total > 0) share = offset_lmp / static_cast<double>(total);
  }

  // forces (a ghost node in map mode is its owner's node: never a ghost index here)
  const int nnodes = static_cast<int>(atom_of.size());
  for (int k = 0; k < nnodes; k++) {
    const int i = atom_of[k];
    const double *fk = &r.forces[3 * static_cast<size_t>(k)];
    if (i < nlocal || !fold) {
      f[i][0] += fk[0] * fconv;
      f[i][1] += fk[1] * fconv;
      f[i][2] += fk[2] * fconv;
    } else {
      double *b = &ghostbuf[9 * static_cast<size_t>(i - nlocal)];
      b[0] += fk[0] * fconv;
      b[1] += fk[1] * fconv;
      b[2] += fk[2] * fconv;
    }
  }

  if (eflag_global) eng_vdwl += r.energy * econv + share * static_cast<double>(n_local_nodes);
  if (eflag_atom) {
    for (int k = 0; k < n_local_nodes; k++) eatom[atom_of[k]] += r.atom_energies[k] * econv + share;
  }
  // LAMMPS order xx yy zz xy xz yz from the row-major 3x3 model virial
  static const int vidx[6] = {0, 4, 8, 1, 2, 5};
  if (vflag_global)
    for (int c = 0; c < 6; c++) virial[c] += r.virial[vidx[c]] * econv;
  if (vflag_atom) {
    for (int k = 0; k < nnodes; k++) {
      const int i = atom_of[k];
      const double *vk = &r.atom_virial[9 * static_cast<size_t>(k)];
      if (i < nlocal || !fold) {
        for (int c = 0; c < 6; c++) vatom[i][c] += vk[vidx[c]] * econv;
      } else {
        double *b = &ghostbuf[9 * static_cast<size_t>(i - nlocal)];
        for (int c = 0; c < 6; c++) b[3 + c] += vk[vidx[c]] * econv;
      }
    }
  }

  // newton off: LAMMPS does not sum ghost forces onto owners; do it here (all ranks call)
  if (fold) {
    fold_vatom = vflag_atom ? 1 : 0;
    comm_what = COMM_FOLD;
    comm->reverse_comm(this, 9);
  }
}

/* ----------------------------------------------------------------------
   committee deviations (docs/lammps.md, the DP-GEN columns), from the members' forces after
   the ghost rows are summed onto their owners, in LAMMPS units, over the atoms the model
   covers on all ranks (population statistics over the K members):
     sigma_F(i) = sqrt(1/K sum_k |F_k(i) - mean_k F(i)|^2): max, min, mean over atoms
     virial: std_k W_k(ab) / N for each of the 9 components: max, min, mean over them
     energy: std_k E_k / N
   devi[] holds them on rank 0 and zeros elsewhere (compute pair sums pvector over ranks).
------------------------------------------------------------------------- */

void PairEquiformer::compute_deviation(const equiformer::Result &r)
{
  const int K = model->committee_size();
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const size_t w = 3 * static_cast<size_t>(K);
  const size_t nnodes = atom_of.size();    // rows of the member outputs
  const double fconv = energy_to_lmp * length_to_model, econv = energy_to_lmp;

  // members' forces per LAMMPS atom; map mode has no ghost nodes (their edges act on the owners)
  featbuf.assign(static_cast<size_t>(nall) * w, 0.0);
  for (size_t k = 0; k < nnodes; k++) {
    double *row = &featbuf[atom_of[k] * w];
    for (int m = 0; m < K; m++)
      for (int a = 0; a < 3; a++) row[3 * m + a] += r.member_forces[(m * nnodes + k) * 3 + a] * fconv;
  }
  if (mode == MODE_GHOST) {
    comm_width = static_cast<int>(w);
    comm_what = COMM_FEATURES;
    comm->reverse_comm(this, comm_width);
  }

  if (sigma_atom.size() < static_cast<size_t>(atom->nmax)) sigma_atom.resize(atom->nmax);
  // sums over ranks: [sigma_F sum, atoms, ranks that evaluated, K x 9 virials, K local energies,
  // K offsets]; extremes: [max, -min]
  std::vector<double> sums(3 + 11 * static_cast<size_t>(K), 0.0), all_sums(sums.size());
  double *virials = &sums[3], *energies = &sums[3 + 9 * K], *offsets = &sums[3 + 10 * K];
  double ext[2] = {0.0, -std::numeric_limits<double>::infinity()}, all_ext[2];
  for (int i = 0; i < nlocal; i++) {
    sigma_atom[i] = 0.0;
    if (node_of[i] < 0) continue;    // a NULL type: not part of the model
    const double *row = &featbuf[i * w];
    double mean[3] = {0.0, 0.0, 0.0};
    for (int m = 0; m < K; m++)
      for (int a = 0; a < 3; a++) mean[a] += row[3 * m + a] / K;
    double s = 0.0;
    for (int m = 0; m < K; m++)
      for (int a = 0; a < 3; a++) s += (row[3 * m + a] - mean[a]) * (row[3 * m + a] - mean[a]);
    sigma_atom[i] = std::sqrt(s / K);
    sums[0] += sigma_atom[i];
    sums[1] += 1.0;
    ext[0] = std::max(ext[0], sigma_atom[i]);
    ext[1] = std::max(ext[1], -sigma_atom[i]);
  }
  // Each evaluation's member energies carry the member's offset relative to the file's
  // (member_energies minus its local atom energies): once per rank that evaluated, but once per
  // system in the total, so the ranks' offsets are averaged. The file's energy_offset, the same
  // for every member, does not change their spread and is left out.
  sums[2] = n_local_nodes > 0 ? 1.0 : 0.0;
  for (int m = 0; m < K; m++) {
    for (int c = 0; c < 9; c++) virials[9 * m + c] = r.member_virials[9 * m + c] * econv;
    double local = 0.0;
    for (int64_t k = 0; k < n_local_nodes; k++) local += r.member_atom_energies[m * nnodes + k];
    energies[m] = local * econv;
    if (n_local_nodes > 0) offsets[m] = (r.member_energies[m] - local) * econv;
  }
  MPI_Allreduce(sums.data(), all_sums.data(), static_cast<int>(sums.size()), MPI_DOUBLE, MPI_SUM, world);
  MPI_Allreduce(ext, all_ext, 2, MPI_DOUBLE, MPI_MAX, world);

  std::fill(devi, devi + 7, 0.0);
  const double n = all_sums[1];
  if (comm->me != 0 || n == 0.0) return;
  // population standard deviation of K values at stride STRIDE from V
  auto spread = [K](const double *v, int stride) {
    double mean = 0.0, s = 0.0;
    for (int m = 0; m < K; m++) mean += v[m * stride] / K;
    for (int m = 0; m < K; m++) s += (v[m * stride] - mean) * (v[m * stride] - mean);
    return std::sqrt(s / K);
  };
  double vmax = 0.0, vmin = std::numeric_limits<double>::infinity(), vsum = 0.0;
  for (int c = 0; c < 9; c++) {
    const double d = spread(&all_sums[3 + c], 9) / n;
    vmax = std::max(vmax, d);
    vmin = std::min(vmin, d);
    vsum += d;
  }
  devi[0] = vmax;
  devi[1] = vmin;
  devi[2] = vsum / 9.0;
  devi[3] = all_ext[0];
  devi[4] = -all_ext[1];
  devi[5] = all_sums[0] / n;
  std::vector<double> totals(K);
  for (int m = 0; m < K; m++) totals[m] = all_sums[3 + 9 * K + m] + all_sums[3 + 10 * K + m] / all_sums[2];
  devi[6] = spread(totals.data(), 1) / n;
}

/* ----------------------------------------------------------------------
   the deviation file, opened on rank 0 at the first init after pair_style: overwritten
   (DeePMD-kit's model_devi.out behaviour) unless append yes; the header goes into an empty file
------------------------------------------------------------------------- */

void PairEquiformer::open_deviation_file()
{
  if (devi_file.empty() || devi_opened) return;
  devi_opened = true;
  std::string why;
  if (comm->me == 0) {
    devi_fp = fopen(devi_file.c_str(), devi_append ? "a" : "w");
    if (!devi_fp) {
      why = utils::getsyserror();
    } else {
      fseek(devi_fp, 0, SEEK_END);
      if (ftell(devi_fp) == 0) {
        fputs("#       step         max_devi_v         min_devi_v         avg_devi_v         max_devi_f"
              "         min_devi_f         avg_devi_f             devi_e\n", devi_fp);
        fflush(devi_fp);
      }
    }
  }
  int failed = why.empty() ? 0 : 1;
  MPI_Bcast(&failed, 1, MPI_INT, 0, world);
  if (failed)
    error->all(FLERR, "pair_style equiformer: cannot open the deviation file {}: {}", devi_file,
               text_of_rank(why, 0));
}

/* ----------------------------------------------------------------------
   one line every devi_every steps (once per step: a second evaluation at the same step, as in
   the setup of a following run or a minimizer's line search, writes nothing): the step, the 7
   columns, with atomic yes sigma_F of every atom in atom-ID order (0 for NULL types)
------------------------------------------------------------------------- */

void PairEquiformer::write_deviation()
{
  const bigint step = update->ntimestep;
  if (!devi_opened || step % devi_every != 0 || step == devi_last_step) return;
  devi_last_step = step;

  std::vector<std::pair<tagint, double>> atoms;
  if (devi_atomic) {
    const int nlocal = atom->nlocal;
    std::vector<tagint> tags(atom->tag, atom->tag + nlocal);
    std::vector<int> counts(comm->nprocs), offsets(comm->nprocs, 0);
    MPI_Gather(&nlocal, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, world);
    for (int p = 1; p < comm->nprocs; p++) offsets[p] = offsets[p - 1] + counts[p - 1];
    const int total = comm->me == 0 ? offsets.back() + counts.back() : 0;
    std::vector<tagint> all_tags(total);
    std::vector<double> all_sigma(total);
    MPI_Gatherv(tags.data(), nlocal, MPI_LMP_TAGINT, all_tags.data(), counts.data(), offsets.data(), MPI_LMP_TAGINT,
                0, world);
    MPI_Gatherv(sigma_atom.data(), nlocal, MPI_DOUBLE, all_sigma.data(), counts.data(), offsets.data(), MPI_DOUBLE,
                0, world);
    for (int k = 0; k < total; k++) atoms.emplace_back(all_tags[k], all_sigma[k]);
    std::sort(atoms.begin(), atoms.end());
  }
  if (comm->me != 0) return;
  std::string line = fmt::format("{:>12}", step);
  for (double v : devi) line += fmt::format("{:19.6e}", v);
  for (const auto &a : atoms) line += fmt::format("{:19.6e}", a.second);
  line += "\n";
  fputs(line.c_str(), devi_fp);
  fflush(devi_fp);
}

/* ----------------------------------------------------------------------
   fix pair ID all pair N equiformer force_deviation 0: sigma_F per local atom (a vector)
------------------------------------------------------------------------- */

void *PairEquiformer::extract_peratom(const char *name, int &ncol)
{
  if (!deviation || strcmp(name, "force_deviation") != 0) return nullptr;
  ncol = 0;
  return sigma_atom.empty() ? nullptr : sigma_atom.data();
}

/* ----------------------------------------------------------------------
   layer mode: node features of local nodes -> their ghost copies on every rank
   (all ranks call this the same number of times; the runtime sees to it)
------------------------------------------------------------------------- */

void PairEquiformer::layer_forward(double *xf, int64_t n_nodes, int64_t F)
{
  if (F > max_width)
    error->one(FLERR, "pair equiformer: layer feature of width {} exceeds the {} found at init", F, max_width);
  const size_t w = static_cast<size_t>(F);
  const int nall = atom->nlocal + atom->nghost;
  if (featbuf.size() < nall * w) featbuf.resize(nall * w);
  for (int64_t k = 0; k < n_local_nodes; k++)
    std::memcpy(&featbuf[atom_of[k] * w], &xf[k * w], w * sizeof(double));
  comm_width = static_cast<int>(F);
  comm->forward_comm(this, comm_width);
  for (int64_t k = n_local_nodes; k < n_nodes; k++)
    std::memcpy(&xf[k * w], &featbuf[atom_of[k] * w], w * sizeof(double));
}

/* ----------------------------------------------------------------------
   layer mode, backward: gradients on ghost nodes -> added to their owners' rows
------------------------------------------------------------------------- */

void PairEquiformer::layer_reverse(double *g, int64_t n_nodes, int64_t F)
{
  if (F > max_width)
    error->one(FLERR, "pair equiformer: layer feature of width {} exceeds the {} found at init", F, max_width);
  const size_t w = static_cast<size_t>(F);
  const int nall = atom->nlocal + atom->nghost;
  featbuf.assign(nall * w, 0.0);
  for (int64_t k = n_local_nodes; k < n_nodes; k++)
    std::memcpy(&featbuf[atom_of[k] * w], &g[k * w], w * sizeof(double));
  comm_width = static_cast<int>(F);
  comm_what = COMM_FEATURES;
  comm->reverse_comm(this, comm_width);
  for (int64_t k = 0; k < n_local_nodes; k++) {
    const double *b = &featbuf[atom_of[k] * w];
    double *gk = &g[k * w];
    for (size_t c = 0; c < w; c++) gk[c] += b[c];
  }
  std::fill(g + n_local_nodes * w, g + n_nodes * w, 0.0);
}

/* ---------------------------------------------------------------------- */

int PairEquiformer::pack_forward_comm(int n, int *list_, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  const size_t w = static_cast<size_t>(comm_width);
  int m = 0;
  for (int k = 0; k < n; k++) {
    std::memcpy(&buf[m], &featbuf[list_[k] * w], w * sizeof(double));
    m += comm_width;
  }
  return m;
}

void PairEquiformer::unpack_forward_comm(int n, int first, double *buf)
{
  const size_t w = static_cast<size_t>(comm_width);
  std::memcpy(&featbuf[first * w], buf, n * w * sizeof(double));
}

/* ---------------------------------------------------------------------- */

int PairEquiformer::pack_reverse_comm(int n, int first, double *buf)
{
  if (comm_what == COMM_FEATURES) {
    const size_t w = static_cast<size_t>(comm_width);
    std::memcpy(buf, &featbuf[first * w], n * w * sizeof(double));
    return n * comm_width;
  }
  const int nlocal = atom->nlocal;
  int m = 0;
  for (int i = first; i < first + n; i++) {
    const double *b = &ghostbuf[9 * static_cast<size_t>(i - nlocal)];
    for (int c = 0; c < 9; c++) buf[m++] = b[c];
  }
  return m;
}

void PairEquiformer::unpack_reverse_comm(int n, int *list_, double *buf)
{
  if (comm_what == COMM_FEATURES) {
    const size_t w = static_cast<size_t>(comm_width);
    for (int k = 0; k < n; k++) {
      double *b = &featbuf[list_[k] * w];
      const double *in = &buf[k * w];
      for (size_t c = 0; c < w; c++) b[c] += in[c];
    }
    return;
  }
  const int nlocal = atom->nlocal;
  double **f = atom->f;
  int m = 0;
  for (int k = 0; k < n; k++) {
    const int j = list_[k];
    if (j < nlocal) {
      f[j][0] += buf[m];
      f[j][1] += buf[m + 1];
      f[j][2] += buf[m + 2];
      if (fold_vatom)
        for (int c = 0; c < 6; c++) vatom[j][c] += buf[m + 3 + c];
    } else {    // a ghost that is itself sent on further (multi-hop exchange)
      double *b = &ghostbuf[9 * static_cast<size_t>(j - nlocal)];
      for (int c = 0; c < 9; c++) b[c] += buf[m + c];
    }
    m += 9;
  }
}

/* ---------------------------------------------------------------------- */

double PairEquiformer::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += sizeof(int) * (node_of.capacity() + atom_of.capacity() + tag2local.capacity());
  bytes += sizeof(int64_t) * (species.capacity() + src.capacity() + dst.capacity());
  bytes += sizeof(double) * (vec.capacity() + ghostbuf.capacity() + featbuf.capacity() + sigma_atom.capacity());
  return bytes;
}
