#!/usr/bin/env bash
# GPU checks and GPU benchmarks in one call (a few minutes on one GPU).
#
#   bash bench/gpu_check.sh            # from the repository root
#
# 1. Tests that matter on a GPU, each on the GPU backend: the grouped / lax
#    convolution paths equal the CPU-style shifted paths (depthwise and dense,
#    forward + gradients), the bf16 train step is finite with float32 state,
#    the exported model runs and equals the live (workdir) model.
# 2. Benchmarks in bf16 against PyTorch AMP (eager, channels_last, compile):
#    bench.train_step (preset full, 512 px; ours vs the peer) and
#    bench.remove (ours only, no peer exists for the whole pipeline), written to
#    bench/results/train_step_gpu.md and bench/results/remove_gpu.md with the
#    GPU's name in them.
#
# Without a GPU it says so and runs only the CPU-capable part of step 1
# (the same parity tests on CPU), then exits 0; nothing is written to
# bench/results/. CI never runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

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
# tests/conftest.py forces 4 CPU devices for the CPU suite; on the GPU run
# the tests must see the GPU, so the platform is pinned explicitly.
export JAX_PLATFORMS=cuda
"$PYTHON" -m pytest -q -p no:cacheprovider "${parity_tests[@]}" \
  "tests/test_train.py::test_bfloat16_compute_keeps_float32_state" \
  "tests/test_export.py::test_exported_calls_match_live_for_any_batch_and_bucket"

mkdir -p bench/results
"$PYTHON" -m bench.train_step --preset full --size 512 --steps 5 --dtype bfloat16 \
  --peer_modes eager,channels_last,compile --out bench/results/train_step_gpu.md
# bench.remove prints its table (it names the device); no PyTorch peer there.
{ echo "GPU: $gpu, \`python -m bench.remove\` (random demo-preset weights), $(date -u +%F)"
  echo
  "$PYTHON" -m bench.remove; } > bench/results/remove_gpu.md.tmp
mv bench/results/remove_gpu.md.tmp bench/results/remove_gpu.md
echo "gpu_check: done on $gpu; results in bench/results/*_gpu.md"
