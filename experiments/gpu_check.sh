#!/usr/bin/env bash
# The GPU checks in one run that fits in 8 minutes on one GPU: install fewshot from this
# working tree, run the `cuda` tests, the MAML speed against learn2learn at meta-batch 4
# and 32, `fewshot pretrain` images/s against a plain torchvision loop, episodes/s from
# the cache on the GPU; then write experiments/results/gpu.md (device, versions, results).
#
#   bash experiments/gpu_check.sh              # on a machine with a CUDA GPU
#   GPU_CHECK_DRY=1 bash experiments/gpu_check.sh   # no GPU: every non-CUDA part, small
#   bash experiments/gpu_check.sh --wheels     # where PyPI is reachable: fill .whl/
#
# A GPU machine without a package index: run `--wheels` first where pip works; it puts
# in .whl/ (git-ignored) the wheels that such a machine's Python lacks (pydantic,
# learn2learn built for that Python, gym), which this script installs offline.
# Environment: PYTHON (default python3), OUT (the folder for the log, the tables and
# gpu.md; default a new temporary one), GPU_CHECK_BUDGET (seconds, default 460),
# GPU_CHECK_WHEELS (default .whl), GPU_CHECK_PYVER (--wheels: the GPU machine's Python,
# default 3.12). A dry run writes gpu.md to OUT only, never to experiments/results/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.whl}"
DRY="${GPU_CHECK_DRY:-0}"

# ---------------------------------------------------------------- --wheels (needs PyPI)
if [[ "${1:-}" == "--wheels" ]]; then
    pyver="${GPU_CHECK_PYVER:-3.12}"
    tag="cp${pyver/./}"
    mkdir -p "$WHEELS"
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    "$PY" -m pip download --quiet --only-binary=:all: --python-version "$pyver" \
        --implementation cp "${platforms[@]}" -d "$WHEELS" pydantic gym-notices
    "$PY" -m pip wheel --quiet --no-deps -w "$WHEELS" gym==0.26.2  # pure Python, sdist only
    # learn2learn has C extensions: built by an interpreter of the GPU machine's version,
    # from its sdist with the generated C files deleted (tests/install_learn2learn.sh says why).
    builder="$(command -v "python$pyver" 2>/dev/null || true)"
    if [[ -z "$builder" || ! -x "$builder" ]] || ! "$builder" -V >/dev/null 2>&1; then
        builder="$(ls -d "$HOME"/.pyenv/versions/"$pyver"*/bin/python"$pyver" 2>/dev/null \
                   | tail -1 || true)"
    fi
    if [[ -z "$builder" ]]; then
        echo "error: no python$pyver here to build learn2learn for the GPU machine" >&2
        exit 1
    fi
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$builder" -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip install --quiet "cython<3" numpy setuptools wheel
    "$tmp/venv/bin/python" -m pip download --quiet --no-deps --no-binary learn2learn \
        --no-build-isolation learn2learn==0.2.0 -d "$tmp"
    tar xzf "$tmp/learn2learn-0.2.0.tar.gz" -C "$tmp"
    rm -f "$tmp"/learn2learn-0.2.0/learn2learn/data/*.c
    (cd "$tmp/learn2learn-0.2.0" && "$tmp/venv/bin/python" setup.py build_ext bdist_wheel \
        >"$tmp/build.log" 2>&1) || { cat "$tmp/build.log" >&2; exit 1; }
    cp "$tmp"/learn2learn-0.2.0/dist/learn2learn-0.2.0-"$tag"-*.whl "$WHEELS"/
    echo "wheels for Python $pyver in $WHEELS ($(du -sh "$WHEELS" | cut -f1)):"
    ls "$WHEELS"
    exit 0
fi

# ---------------------------------------------------------------- CUDA, before anything heavy
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "error: $PY cannot import torch (set PYTHON to the interpreter with PyTorch)" >&2
    exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    if [[ "$DRY" != 1 ]]; then
        echo "error: no CUDA device visible to $PY; GPU_CHECK_DRY=1 runs the CPU parts" >&2
        exit 2
    fi
    echo "GPU_CHECK_DRY=1: no CUDA device; running every part that needs none, small, on the CPU"
    DEVICE=cpu
else
    DEVICE=cuda
fi

LOG="${OUT:-$(mktemp -d)}"
mkdir -p "$LOG"
exec > >(tee -a "$LOG/gpu_check.log") 2>&1
START=$SECONDS
BUDGET="${GPU_CHECK_BUDGET:-460}"
FAILED=()

# Runs a part under `timeout`: at most $1 seconds and never past the budget's end.
part() {
    local name="$1" limit="$2" left rc=0
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        echo "== $name: skipped, the time budget is spent"
        FAILED+=("$name (no time left)")
        return 0
    fi
    echo "== $name (at most ${limit} s, $((SECONDS - START)) s in)"
    timeout --kill-after=5 "$limit" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        FAILED+=("$name (timed out after ${limit} s)")
    elif ((rc != 0)); then
        FAILED+=("$name (exit $rc)")
    fi
    echo "== $name: exit $rc, $((SECONDS - START)) s in"
}

# ---------------------------------------------------------------- install
install() {
    local need=(pydantic yaml typer rich safetensors PIL numpy torchvision pytest)
    # carried wheels, for what this Python lacks only (no index needed)
    if compgen -G "$WHEELS/pydantic-*.whl" >/dev/null && ! "$PY" -c 'import pydantic' 2>/dev/null
    then
        "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" pydantic \
            || echo "warning: pydantic from $WHEELS failed"
    fi
    if compgen -G "$WHEELS/learn2learn-*.whl" >/dev/null \
            && ! "$PY" -c 'import learn2learn' 2>/dev/null; then
        "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" gym \
            && "$PY" -m pip install --quiet --no-index --no-deps "$WHEELS"/learn2learn-*.whl \
            || echo "warning: learn2learn from $WHEELS failed"
    fi
    local missing
    missing="$("$PY" - "${need[@]}" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
)"
    if [[ -n "$missing" ]]; then
        echo "missing: $missing; installing fewshot with its dependencies from the index"
        "$PY" -m pip install --quiet --retries 1 --timeout 15 -e '.[dev]' || {
            echo "error: cannot install $missing (no package index here?): run" \
                 "'bash experiments/gpu_check.sh --wheels' where pip works and bring .whl/" >&2
            return 1
        }
    elif ! "$PY" -c 'import importlib.metadata as m; m.distribution("fewshot")' 2>/dev/null
    then  # its dependencies are all there: the package alone, editable, from this tree
        "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . \
            || echo "note: editable install failed; running from PYTHONPATH=$ROOT"
    fi
    if ! "$PY" -c 'import learn2learn' 2>/dev/null; then
        PYTHON="$PY" PIP_RETRIES=1 PIP_TIMEOUT=15 bash tests/install_learn2learn.sh \
            || echo "warning: learn2learn unavailable: its tests skip and bench_maml runs fewshot alone"
    fi
    "$PY" -c 'import fewshot, pydantic; print("fewshot", fewshot.__version__, "from",
               fewshot.__file__)'
}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the tree itself, installed or not
export WANDB_MODE=offline PYTHONUNBUFFERED=1 PY WHEELS ROOT
export -f install
part install 90 bash -c 'set -euo pipefail; install'
L2L=0
"$PY" -c 'import warnings; warnings.simplefilter("ignore"); import learn2learn' 2>/dev/null \
    && L2L=1

# ---------------------------------------------------------------- the cuda tests
workers=()
if [[ "$DEVICE" == cuda ]] && "$PY" -c 'import xdist' 2>/dev/null; then
    workers=(-n 4)  # the tests are small; four processes share the GPU
fi
part tests 130 bash -c "set -o pipefail; '$PY' -m pytest -m cuda tests/test_cuda.py -q -rs \
    ${workers[*]} -p no:cacheprovider 2>&1 | tee '$LOG/tests.txt'"

# ---------------------------------------------------------------- MAML vs learn2learn
impls=(fewshot)
((L2L)) && impls+=(learn2learn)
if [[ "$DEVICE" == cuda ]]; then
    maml=(--device cuda --meta-batch 4 32 --rounds 2 --iters 3)
else
    maml=(--device cpu --meta-batch 4 --rounds 1 --iters 1 --channels 8)  # plumbing only
fi
part bench_maml 150 "$PY" experiments/bench_maml.py "${maml[@]}" --impls "${impls[@]}" \
    --out "$LOG/bench_maml.md"

# ---------------------------------------------------------------- pretrain images/s
if [[ "$DEVICE" == cuda ]]; then
    pre=(--device cuda)
else
    pre=(--device cpu --backbone conv4 --size 32 --per-class 40 --batch 32 --warmup 2
         --workers 2)
fi
part bench_pretrain 60 "$PY" experiments/bench_pretrain.py "${pre[@]}" \
    --out "$LOG/bench_pretrain.md"

# ---------------------------------------------------------------- episodes/s, GPU cache
if [[ "$DEVICE" == cuda ]]; then
    cache=(--device cuda)
else
    cache=(--device cpu --classes 10 --per-class 30 --episodes 100)
fi
part bench_cache_gpu 30 "$PY" experiments/bench_cache_gpu.py "${cache[@]}" \
    --out "$LOG/bench_cache_gpu.md"

# ---------------------------------------------------------------- experiments/results/gpu.md
goal="n/a (no learn2learn at meta-batch 32)"
ratio="$(sed -n 's/^- meta-batch 32: fewshot \/ learn2learn = \([0-9.]*\)x.*/\1/p' \
         "$LOG/bench_maml.md" 2>/dev/null || true)"
if [[ -n "$ratio" ]]; then
    if "$PY" -c "import sys; sys.exit(0 if float('$ratio') >= 5 else 1)"; then
        goal="met: ${ratio}x learn2learn's tasks/s (goal: at least 5x)"
    else
        goal="NOT met: ${ratio}x learn2learn's tasks/s (goal: at least 5x)"
    fi
fi
tests_line="$(grep -E '(passed|failed|skipped|error)' "$LOG/tests.txt" 2>/dev/null | tail -1 \
              || true)"
{
    echo "# GPU check"
    echo
    "$PY" - <<'EOF'
import platform, subprocess, torch
cuda = torch.cuda.is_available()
if cuda:
    props = torch.cuda.get_device_properties(0)
    name = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}, {props.multi_processor_count} multiprocessors")
else:
    name = "none (dry run on the CPU)"
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=20).stdout.strip() or "-"
except (OSError, subprocess.SubprocessError):
    driver = "-"
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=20).stdout.strip() or "-"
except (OSError, subprocess.SubprocessError):
    commit = "-"
print(f"- device: {name}")
print(f"- torch {torch.__version__} (built for CUDA {torch.version.cuda or '-'}), cuDNN "
      f"{torch.backends.cudnn.version() if cuda else '-'}, NVIDIA driver {driver}")
print(f"- Python {platform.python_version()}, {platform.machine()}, commit {commit}")
EOF
    echo "- written by experiments/gpu_check.sh in $((SECONDS - START)) s; $(date -u +%F)"
    echo
    echo "## cuda tests"
    echo
    echo "\`python -m pytest -m cuda tests/test_cuda.py\`: ${tests_line:-no result}"
    echo
    echo "## Second-order MAML, Conv4 84 px 5-way 1-shot, against learn2learn"
    echo
    echo "Goal at meta-batch 32: $goal. Meta-gradients: see the cuda tests (vmap vs loop,"
    echo "and vs learn2learn's MAML in float64 on the GPU)."
    echo
    sed 's/^# /### /' "$LOG/bench_maml.md" 2>/dev/null || echo "(no result)"
    echo
    echo "## Pretraining images/s"
    echo
    sed 's/^# /### /' "$LOG/bench_pretrain.md" 2>/dev/null || echo "(no result)"
    echo
    echo "## Episodes/s from the cache on the GPU"
    echo
    sed 's/^# /### /' "$LOG/bench_cache_gpu.md" 2>/dev/null || echo "(no result)"
    if ((${#FAILED[@]})); then
        echo
        echo "## Parts that did not finish cleanly"
        echo
        printf -- '- %s\n' "${FAILED[@]}"
    fi
} >"$LOG/gpu.md"
if [[ "$DEVICE" == cuda ]]; then
    mkdir -p experiments/results
    cp "$LOG/gpu.md" experiments/results/gpu.md
    echo "wrote experiments/results/gpu.md (and $LOG/gpu.md)"
else
    echo "dry run: wrote $LOG/gpu.md (experiments/results/gpu.md is for GPU runs only)"
fi
cat "$LOG/gpu.md"
echo "done in $((SECONDS - START)) s"
if ((${#FAILED[@]})); then
    echo "not clean: ${FAILED[*]}" >&2
    exit 1
fi
