#!/usr/bin/env bash
# The whole benchmark suite of docs/benchmarks.md: model evaluation (ours, the official code,
# NequIP, MACE on the same structures), LAMMPS and OpenMM overheads, plots. Results (JSON, logs,
# PNG) go to OUT (default benchmarks/results). Needs scripts/setup.sh, and for the peers
# benchmarks/setup_peers.sh; OFFICIAL=/path/to/atomicarchitects/equiformer adds the official code.
# QUICK=1 keeps to the sizes that run in about half an hour on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=.venv/bin/python
OFF=()
[ -n "${OFFICIAL:-}" ] && OFF=(--official "$OFFICIAL")
if [ "${QUICK:-0}" = 1 ]; then BULK=(256 500 2048 4000); L3=(32 108 500); else BULK=(256 500 864 2048 4000 6912); L3=(32 108 256 500); fi
uptime | tee "$OUT/load.txt"

run() { local name=$1; shift; echo "== $name"; "$@" 2>&1 | tee "$OUT/$name.md"; }

# the headline: paper L2/L3 on copper clusters and a 21-atom molecule, ours vs the official code
run l2-clusters $PY benchmarks/model_eval.py --presets md17-l2 --systems cluster molecule --sizes 32 108 256 500 \
    --threads 2 --seconds 5 "${OFF[@]}" --json "$OUT/l2-clusters.json"
run l3-clusters $PY benchmarks/model_eval.py --presets md17-l3 --systems cluster --sizes "${L3[@]}" \
    --threads 2 --seconds 5 "${OFF[@]}" --official-max-atoms 108 --json "$OUT/l3-clusters.json"
# size scaling of the exported model (periodic bulk, per-atom cost and memory up to 4,000+ atoms)
run l2-bulk $PY benchmarks/model_eval.py --presets md17-l2 --systems bulk --sizes "${BULK[@]}" --modes exported \
    --threads 2 --seconds 1 --min-repeats 1 --warmup 1 --json "$OUT/l2-bulk.json"
# the reference SO(3) path, float64, one thread, and the small preset the shipped models use
run variants $PY benchmarks/model_eval.py --presets md17-l2 --systems cluster --sizes 256 --modes eager exported reference \
    --dtypes float32 float64 --threads 1 2 --seconds 5 --json "$OUT/variants.json"
run small $PY benchmarks/model_eval.py --presets small --systems cluster molecule --sizes 32 108 256 500 \
    --threads 1 2 --seconds 5 --json "$OUT/small.json"
# peers on the same structures
if [ -x benchmarks/.venvs/nequip/bin/python ] && [ -x benchmarks/.venvs/mace/bin/python ]; then
    run peers $PY benchmarks/peers.py --threads 2 --sizes 32 108 256 500 --systems cluster molecule --json "$OUT/peers.json"
fi
# engines: LAMMPS step vs a bare call, MPI scaling; OpenMM routes vs a bare call
run lammps env OMP_NUM_THREADS=1 $PY benchmarks/lammps_scaling.py
$PY -c "import torch; from equiformer.model import build_model; from equiformer.export.torchscript import export_model; \
torch.manual_seed(0); export_model(build_model({'preset': 'tiny', 'species': ['H', 'C', 'O', 'Cu']}), '$OUT/tiny.pt', 'float32')"
run openmm $PY -m equiformer.openmm.benchmark "$OUT/tiny.pt" --atoms 300 --steps 10 --threads 1 \
    --routes torchforce,pythonforce,native
$PY benchmarks/plot.py "$OUT/clusters" "$OUT/l2-clusters.json" "$OUT/l3-clusters.json" $( [ -f "$OUT/peers.json" ] && echo "$OUT/peers.json")
$PY benchmarks/plot.py "$OUT/bulk" "$OUT/l2-bulk.json"
