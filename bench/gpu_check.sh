#!/usr/bin/env bash
# GPU checks and GPU benchmarks in one call (under 10 minutes on one GPU).
#
#   bash bench/gpu_check.sh            # from the repository root
#   RESULTS_DIR=/some/dir bash bench/gpu_check.sh
#
# 1. Tests that matter on a GPU, each on the GPU backend: the grouped / lax
#    convolution paths equal the CPU-style shifted paths (depthwise and dense,
#    forward + gradients), the bf16 train step is finite with float32 state,
#    the exported model runs and equals the live (workdir) model.
# 2. Benchmarks in bf16 against PyTorch AMP bf16 (eager, channels_last,
#    torch.compile), one device: bench.preseg_infer (pre-segmentation
#    inference, 512 px, batch 1 and 8), bench.train_step (preset full, 512 px)
#    and bench.remove (ours only: no PyTorch peer exists for the pipeline).
#    Written to $RESULTS_DIR (default bench/results): gpu_tests.txt,
#    preseg_infer_gpu.md, train_step_gpu.md, matting_step_gpu.md, remove_gpu.md,
#    each naming the GPU. Each part has a time limit (*_LIMIT_S, seconds).
#    bench/results/gpu_check_h200.md: what the first lease found (XLA:GPU
#    compile times of minutes; a Triton GEMM-fusion crash in the remover).
#
# Packages bgmat needs that the GPU image lacks can travel as wheels in .whl/
# (see /work/.library/device/README.md); they are installed into /tmp/site.
#
# Without a GPU it says so and runs only the CPU-capable part of step 1
# (the same parity tests on CPU), then exits 0; nothing is written to
# bench/results/. CI never runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -d .whl ]] && ! "$PYTHON" -c 'import grain, tensorflow_datasets, clu, ml_collections' \
    2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

backend="$("$PYTHON" -c 'import jax; print(jax.default_backend())')"
parity_tests=(
  "tests/models/test_layers_conv.py"
  "tests/models/test_xception.py::test_depthwise_impls_match_forward_and_grad"
  "tests/models/test_xception.py::test_xception_tiny_impls_match_forward_and_grad"
)

if [[ "$backend" != "gpu" ]]; then
  echo "gpu_check: no GPU (jax default backend: $backend); GPU tests and benchmarks skipped."
  echo "gpu_check: running the CPU-capable parity tests only."
  "$PYTHON" -m pytest -q "${parity_tests[@]}"
  exit 0
fi

gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
echo "gpu_check: GPU: $gpu"
results="${RESULTS_DIR:-bench/results}"
mkdir -p "$results"
# tests/conftest.py forces 4 CPU devices for the CPU suite; on the GPU run
# the tests must see the GPU, so the platform is pinned explicitly.
export JAX_PLATFORMS=cuda PYTHONUNBUFFERED=1
status=0
# Each part has its own time limit, so that one slow compile cannot take the
# whole call; a table is written line by line (tee), so a part stopped at its
# limit still leaves the rows it measured.
section() {  # section NAME LIMIT_S OUTFILE COMMAND...
  local name="$1" limit="$2" out="$3"; shift 3
  echo "gpu_check: [$name] (limit ${limit}s)"
  local start=$SECONDS rc=0
  { echo "GPU: $gpu; \`$*\`; $(date -u +%F)"; echo; } > "$out"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$out" || rc=$?
  echo "gpu_check: [$name] exit $rc after $((SECONDS - start))s" | tee -a "$out"
  [[ $rc == 0 ]] || status=1
}

"$PYTHON" - <<'EOF' || true
import importlib.metadata as m
def version(name):
  try:
    return m.version(name)
  except m.PackageNotFoundError:
    return 'missing'
print('gpu_check: versions:', ', '.join(f'{p} {version(p)}' for p in (
    'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'torch', 'timm',
    'segmentation-models-pytorch', 'grain', 'tensorflow-datasets')))
EOF
# The parity tests' tolerances are derived for IEEE float32; XLA on Ampere and
# newer runs float32 dots and convolutions in TF32 by default (measured on an
# H200: 6 of 19 failed by TF32-sized errors), so they run at 'highest'.
section tests "${TESTS_LIMIT_S:-120}" "$results/gpu_tests.txt" \
  env JAX_DEFAULT_MATMUL_PRECISION=highest "$PYTHON" -m pytest -q -p no:cacheprovider "${parity_tests[@]}" \
  "tests/test_train.py::test_bfloat16_compute_keeps_float32_state" \
  "tests/test_export.py::test_exported_calls_match_live_for_any_batch_and_bucket"
section preseg_infer "${INFER_LIMIT_S:-150}" "$results/preseg_infer_gpu.md" \
  "$PYTHON" -m bench.preseg_infer --preset full --size 512 --batches 1,8 --repeats 10 \
  --warmup 3 --peer_modes eager,channels_last,compile
section train_step "${TRAIN_LIMIT_S:-150}" "$results/train_step_gpu.md" \
  "$PYTHON" -m bench.train_step --preset full --size 512 --steps 5 --dtype bfloat16 \
  --stages preseg --peer_modes eager,channels_last,compile
section matting_step "${MATTING_LIMIT_S:-75}" "$results/matting_step_gpu.md" \
  "$PYTHON" -m bench.train_step --preset full --size 512 --steps 5 --dtype bfloat16 \
  --stages matting --peer_modes ''
# bench.remove: the whole pipeline (no PyTorch peer exists for it).
section remove "${REMOVE_LIMIT_S:-60}" "$results/remove_gpu.md" \
  "$PYTHON" -m bench.remove --images 40
echo "gpu_check: done on $gpu (status $status); results in $results"
exit $status
