#!/usr/bin/env bash
# The one prepared script for a lent GPU machine: every CUDA check of mimir, in under 8 minutes,
# with every figure in ONE file.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine: cuda:0, writes $OUT/gpu_check.md
#   bash benchmarks/gpu_check.sh --device cuda:1 -o /tmp/gpu_check.md
#   bash benchmarks/gpu_check.sh --device cpu --quick  # the dry run on a CPU (tests/test_gpu_check.py runs it)
#
# What it runs, in order, each under its own time limit (the whole within ~470 s):
#   0. set-up: torch with CUDA (the machine is expected to have it; else wheels carried in .whl/ are
#      installed with pip --no-index), mimir's other dependencies (the same), and the compiled
#      preprocessing extension, built in place (a copied work tree lacks the git-ignored _kernels*.so);
#   1. the precision agreement (benchmarks/precision.py and, where pytest is installed, the CUDA half of
#      tests/inference/test_precision.py): the device's default settings (exact fp32, TF32 off) against
#      --device cpu, within 1e-3 of the predicted sd; the bf16 opt-in's deviation measured;
#   2. a resume across precision (benchmarks/resume_precision.py): mimir batch --gpu N with the default,
#      then --precision bf16 (every subject redone), then the default again (redone, same bytes);
#   3. benchmarks/gpu.py: inference images/s by precision, members and batch (with torch.compile,
#      guarded), and mimir batch --gpu N at 1, 8 and 15 workers; it writes its JSON as it goes, so a
#      time limit loses only the figures not yet measured.
#
# The machine has no network. Carry what may be missing as wheels, made on a machine with network:
#   pip download --dest .whl --only-binary=:all: torch numpy pydicom safetensors typer rich ... \
#       'setuptools>=68' wheel
# (setuptools and wheel: pip builds mimir in an isolated environment, from .whl/ too; .whl/ is
# git-ignored: name it in the device tool's `carry`). The output file holds each step's
# tables and its JSON, the machine (GPU, driver, torch, CUDA) and, last, one line per step: ok/FAILED.
set -u

DEVICE="cuda:0"
QUICK=0
OUTFILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -o|--out) OUTFILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 1 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO" || exit 1
if [ -z "$OUTFILE" ]; then
  OUTFILE="${OUT:-$REPO}/gpu_check.md"
fi
mkdir -p "$(dirname "$OUTFILE")"
: > "$OUTFILE"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mimir-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MIMIR_HOME="$WORK/home" MIMIR_CACHE="$WORK/cache"
BUDGET=470            # seconds for the whole script: the device tool allows 8 minutes a run
SUMMARY=()

say() { printf '%s\n' "$*" | tee -a "$OUTFILE"; }
left() { echo $(( BUDGET - SECONDS )); }
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, its output into the file
  local name="$1" limit="$2"; shift 2
  local rest; rest=$(left)
  [ "$limit" -gt "$rest" ] && limit="$rest"
  if [ "$limit" -lt 10 ]; then
    say ""; say "## $name: skipped (no time left)"; SUMMARY+=("$name: skipped (no time left)"); return
  fi
  say ""; say "## $name"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>"$WORK/stderr.txt" | tee -a "$OUTFILE"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    say ""; say "stderr (last lines):"; say '```'; tail -n 15 "$WORK/stderr.txt" | tee -a "$OUTFILE" >/dev/null; say '```'
  fi
  local verdict="ok"
  [ "$rc" -eq 124 ] && verdict="TIME LIMIT ($limit s)"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && verdict="FAILED (exit $rc)"
  SUMMARY+=("$name: $verdict, $(( SECONDS - t0 )) s")
}
attach() {  # attach TITLE FILE: a JSON file of figures, fenced
  [ -s "$2" ] || return 0
  say ""; say "### $1 (JSON)"; say '```json'; cat "$2" >> "$OUTFILE"; say '```'
}

say "# mimir GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE$([ $QUICK = 1 ] && echo ' (QUICK dry run: not a measurement)')"
say ""
say "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) CPUs, $("$PY" --version 2>&1)"

# ---------------------------------------------------------------------------- 0. set-up
cuda_ok() { "$PY" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null | tail -n 1; }
install_wheels() {  # install_wheels WHAT...: from the carried .whl/ only (no network here)
  if [ -d "$REPO/.whl" ]; then
    "$PY" -m pip install --quiet --no-index --find-links "$REPO/.whl" "$@" >>"$WORK/pip.txt" 2>&1
  else
    return 1
  fi
}
if [ "$DEVICE" != "cpu" ] && [ "$(cuda_ok)" != "True" ]; then
  say "torch with CUDA is not importable here ($(cuda_ok || true)): installing torch from .whl/"
  install_wheels torch || say "no usable torch wheel in .whl/ (see the header of this script)"
fi
if ! "$PY" -c "import mimir.cli, numpy, pydicom, safetensors, typer, rich" 2>/dev/null; then
  say "mimir's dependencies are missing: installing them from .whl/"
  install_wheels -e "$REPO" || say "could not install mimir's dependencies from .whl/ (see the header of this script)"
fi
if "$PY" setup.py build_ext --inplace -q >"$WORK/build.txt" 2>&1; then
  KERNELS=$("$PY" -c "from mimir.preprocessing import kernels; print('compiled' if kernels.enabled() else 'numpy')" 2>/dev/null)
else
  KERNELS="numpy (the C extension did not build: $(tail -n 1 "$WORK/build.txt"))"
fi
say "preprocessing: ${KERNELS:-unknown}"
say ""
say '```'
"$PY" - "$DEVICE" <<'EOF' 2>&1 | tee -a "$OUTFILE"
import sys
import torch
dev = sys.argv[1]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if dev.startswith("cuda"):
    if not torch.cuda.is_available():
        print("CUDA is NOT available: the CUDA checks below will fail")
    else:
        d = torch.device(dev)
        p = torch.cuda.get_device_properties(d)
        print(f"{dev}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
              f"{torch.cuda.device_count()} GPU(s) visible")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$OUTFILE"
say '```'
if [ "$DEVICE" != "cpu" ] && [ "$(cuda_ok)" != "True" ]; then
  say ""; say "STOP: no CUDA here, nothing below could measure a GPU"
  exit 1
fi

# ---------------------------------------------------------------------------- 1. precision agreement
if [ $QUICK = 1 ]; then N_PREC=1; else N_PREC=16; fi
step "1. precision: $DEVICE default and bf16 against --device cpu" 150 \
  "$PY" benchmarks/precision.py --device "$DEVICE" --subjects "$N_PREC" --json "$WORK/precision.json"
attach "precision" "$WORK/precision.json"
if [ "$DEVICE" != "cpu" ] && "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
  step "1b. tests/inference/test_precision.py on the GPU (its CUDA half runs here)" 120 \
    "$PY" -m pytest -q -p no:cacheprovider tests/inference/test_precision.py tests/utils/test_devices.py
fi

# ---------------------------------------------------------------------------- 2. resume across precision
QUICK_ARG=(); [ $QUICK = 1 ] && QUICK_ARG=(--quick)
step "2. resume across precision: mimir batch on $DEVICE" 120 \
  "$PY" benchmarks/resume_precision.py --device "$DEVICE" "${QUICK_ARG[@]}" --json "$WORK/resume.json"
attach "resume" "$WORK/resume.json"

# ---------------------------------------------------------------------------- 3. benchmarks/gpu.py
if [ $QUICK = 1 ]; then
  GPU_ARGS=(--quick)
else
  GPU_ARGS=(--subjects 120 --workers 1 8 15 --min-time 1.5)
fi
step "3. benchmarks/gpu.py on $DEVICE" 330 \
  "$PY" benchmarks/gpu.py --device "$DEVICE" "${GPU_ARGS[@]}" --data "$WORK/subjects" --json "$WORK/gpu.json"
attach "gpu.py" "$WORK/gpu.json"

say ""
say "## Summary ($SECONDS s)"
say ""
for line in "${SUMMARY[@]}"; do say "- $line"; done
case "${SUMMARY[*]}" in
  *FAILED*|*"TIME LIMIT"*|*skipped*) exit 1 ;;
esac
exit 0
