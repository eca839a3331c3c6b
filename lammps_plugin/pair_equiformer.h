/* -*- c++ -*- ----------------------------------------------------------
   pair_style equiformer: the Equiformer equivariant potential from an exported
   TorchScript model (docs/model-format.md), evaluated with equiformer_runtime.
   Part of the equiformer project; drops into a LAMMPS source tree (src/) or builds as
   a plugin (equiformerplugin.cpp). libtorch stays out of this header.
------------------------------------------------------------------------- */

#ifdef PAIR_CLASS
// clang-format off
PairStyle(equiformer,PairEquiformer);
// clang-format on
#else

#ifndef LMP_PAIR_EQUIFORMER_H
#define LMP_PAIR_EQUIFORMER_H

#include "pair.h"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace equiformer {
class Model;
struct Result;
}    // namespace equiformer

namespace LAMMPS_NS {

class PairEquiformer : public Pair {
 public:
  PairEquiformer(class LAMMPS *);
  ~PairEquiformer() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;
  // "force_deviation" (committee with the deviation keyword): sigma_F per local atom, for fix pair
  void *extract_peratom(const char *, int &) override;

  // how the graph is built across MPI ranks (see docs/lammps.md)
  enum Mode { MODE_AUTO, MODE_MAP, MODE_GHOST, MODE_LAYER };

  // layer mode: node features of the graph (rows = graph nodes, F values each) exchanged
  // between layers; called back by the runtime (equiformer::LayerExchange)
  void layer_forward(double *x, int64_t n_nodes, int64_t F);
  void layer_reverse(double *g, int64_t n_nodes, int64_t F);
  // the local nodes whose features other ranks read (LayerExchange::boundary_rows)
  const std::vector<int64_t> *layer_boundary_rows() const;

 protected:
  void allocate();
  std::string device_for_this_rank();
  void stop_together(const std::string &failure);
  void check_same_model();
  std::string text_of_rank(const std::string &text, int root);
  void warn_close_atoms();
  void build_graph_map();
  void build_graph_ghost();
  void build_graph_layer();
  // shared by map and layer modes: ghosts onto their local owners (one place for the tag lookup)
  void map_ghosts_to_owners(bool require_owner);
  void report_layer_traffic(int64_t rows_moved);
  tagint add_local_nodes();
  void apply_result(const equiformer::Result &, int eflag, int vflag);
  void check_deviation_model();
  void compute_deviation(const equiformer::Result &);
  void open_deviation_file();
  void write_deviation();

  std::unique_ptr<equiformer::Model> model;
  std::string model_file;
  std::string device_request;    // cpu, cuda, auto
  int mode_request;              // Mode
  int mode;                      // resolved in init_style()
  std::vector<int> type2species;    // per LAMMPS type, -1 for NULL
  std::vector<std::string> type2symbol;

  double cutoff_lmp;       // model cutoff in LAMMPS length units
  double range_lmp;        // receptive field in LAMMPS length units: the metadata interaction_range,
                           // widened for models with layer methods (init_style)
  double length_to_model;  // LAMMPS length -> model length
  double energy_to_lmp;    // model energy -> LAMMPS energy
  double offset_lmp;       // energy_offset in LAMMPS energy units
  bool logged;
  bool warned_close;       // the close-atoms warning was given (once per run)

  // graph of the current step
  std::vector<int> node_of;          // LAMMPS atom index -> graph node (-1: not in graph)
  std::vector<int> atom_of;          // graph node -> LAMMPS atom index
  std::vector<int64_t> species, src, dst;
  std::vector<double> vec;
  int64_t n_local_nodes;
  std::vector<int> tag2local;        // single rank: atom ID -> local index
  std::unique_ptr<equiformer::Result> result;

  // newton off with ghost nodes: ghost forces (3) and virials (6) folded back by hand
  std::vector<double> ghostbuf;
  int fold_vatom;

  // per LAMMPS atom, comm_width values: node features or their gradients (layer mode), or the
  // K x 3 member forces of a committee (deviation keyword, ghost mode)
  std::vector<double> featbuf;
  int comm_width;      // values per atom of the current exchange
  int comm_what;       // what pack/unpack_reverse_comm move: COMM_FOLD or COMM_FEATURES (featbuf rows)
  int max_width;       // widest node feature of the model (comm_forward)
  // layer mode: the local nodes that another rank holds as a ghost node, found every step
  // while the edges are built (boundary_flag per local node, boundary_nodes in order)
  std::vector<char> boundary_flag;
  std::vector<int64_t> boundary_nodes;
  bool traffic_reported;    // the first step's exchange traffic was logged (once per run)

  // committee deviations (keyword deviation, docs/lammps.md), computed every step from the
  // members' forces summed onto their owners; the DP-GEN columns in devi[] (pvector on rank 0)
  bool deviation;           // keyword given
  bigint devi_every;        // file line every this many steps
  std::string devi_file;    // "" : no file (compute pair / fix pair only)
  bool devi_atomic;         // file: sigma_F of every atom (in atom-ID order) after the columns
  bool devi_append;         // file: append to an existing file instead of overwriting it
  FILE *devi_fp;            // rank 0
  bool devi_opened;         // the file was opened (known on every rank)
  bigint devi_last_step;    // the step of the last file line (one line per step)
  double devi[7];           // max/min/avg virial, max/min/avg force, energy deviation
  std::vector<double> sigma_atom;    // per local atom: sigma_F (0 for atoms the model does not cover)
  enum { COMM_FOLD, COMM_FEATURES };
};

}    // namespace LAMMPS_NS

#endif
#endif
