#!/usr/bin/env bash
# The ingest benchmark on a GPU machine without network access.
#
# Needs python with torch, torchvision, numpy and Pillow already installed, and a folder of wheels for the rest
# (made elsewhere with: pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
#  --platform manylinux_2_28_x86_64 --no-deps -d gpu-wheels open_clip_torch faiss-cpu ftfy wcwidth regex
#  python-dotenv filelock tqdm packaging).
#
# Usage: evaluation/gpu_bench.sh [WHEEL_DIR] [more benchmark_ingest flags]
# Environment: PYTHON (python3), COUNT (3000 files per size), DISTINCT (500 distinct photos per size, the files
#              cycle through them), SIZES (0.3,2,12), REPEAT (2: best of), OUT (bench-out: JSON results),
#              CORPUS (where generated photos are cached), MEMORY (1: also the 1,000 vs 5,000 images memory check)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="${1:-gpu-wheels}"
[ "$#" -gt 0 ] && shift
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-bench-out}"
CORES="$(nproc)"
mkdir -p "$OUT"

if ! "$PYTHON" -c "import open_clip, faiss, ftfy, regex, dotenv, filelock, tqdm" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps \
    open_clip_torch faiss-cpu ftfy wcwidth regex python-dotenv filelock tqdm packaging
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# One reader worker per core, GPU-sized batches; (b) and (d) are measured with CPU and with GPU (nvJPEG) decoding.
# Thousands of files per size: at over 1,000 images/s, a few hundred would mostly time the workers' start.
"$PYTHON" -m evaluation.benchmark_ingest --device cuda --count "${COUNT:-3000}" --distinct "${DISTINCT:-500}" \
  --sizes "${SIZES:-0.3,2,12}" --repeat "${REPEAT:-2}" --batch-size 256 --workers "$CORES" --gpu-decode both \
  --naive-count 48 \
  --corpus "${CORPUS:-/tmp/image-search-benchmark-photos}" --json "$OUT/ingest-gpu.json" "$@"

if [ "${MEMORY:-1}" = "1" ]; then
  "$PYTHON" -m evaluation.benchmark_ingest --memory --device cuda --batch-size 256 --workers "$CORES" \
    --corpus "${CORPUS:-/tmp/image-search-benchmark-photos}" --json "$OUT/ingest-memory-gpu.json"
fi
