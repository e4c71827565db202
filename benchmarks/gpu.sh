#!/usr/bin/env bash
# One command for a GPU node (issue 14): runs benchmarks/bench_scale.py on the GPU(s) and writes
# its Markdown table to benchmarks/scale_gpu.md (paste it into benchmarks/README.md, "Scale").
# Sized to finish in under 5 minutes on one H200-class GPU: N = 64 and 128, gridsize 1 and 2,
# precision 32-true / bf16-mixed, compile off / on, 1 and 2 devices (2 only where 2 GPUs exist),
# 20,000 inference positions, 4,096 training positions, each row capped at 60 s.
#   usage: benchmarks/gpu.sh [extra bench_scale.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}/scale_gpu.md"
ngpu=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$ngpu" -lt 1 ]; then
  echo "gpu.sh: no CUDA device visible to torch; nothing measured" >&2
  exit 1
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec python benchmarks/bench_scale.py --accelerator gpu --positions 20000 \
  --train-positions 4096 --batch 1024 --threads "$OMP_NUM_THREADS" --timeout 60 \
  --max-devices "$ngpu" --out "$out" "$@"
