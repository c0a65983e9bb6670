#!/usr/bin/env bash
# The ingest benchmark on a GPU machine without network access.
#
# Needs python with torch, torchvision, numpy and Pillow already installed, and a folder of wheels for the rest
# (made elsewhere with: pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
#  --platform manylinux_2_28_x86_64 --no-deps -d gpu-wheels open_clip_torch faiss-cpu ftfy wcwidth regex
#  python-dotenv filelock tqdm packaging, and for the hardware JPEG decoder nvidia-nvimgcodec-cu13 nvidia-nvjpeg).
#
# Usage: evaluation/gpu_bench.sh [WHEEL_DIR] [more benchmark_ingest flags]
# Environment: PYTHON (python3), COUNT (20000 files per size), DISTINCT (200 distinct photos per size, the files
#              cycle through them), SIZES (0.3,2,12), REPEAT (1: best of), CPU_COUNT (2000: files for the slow
#              CPU-decoding rows), DECODE_COUNT (8000: files for (b)), OUT (bench-out: JSON results and logs),
#              CORPUS (where generated photos are cached), PROFILE (1: also each stage's and decoder's rate,
#              evaluation/profile_gpu_decode.py), TESTS (1: also the GPU tests), MEMORY (1: also the 1,000 vs
#              5,000 images memory check)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="${1:-gpu-wheels}"
[ "$#" -gt 0 ] && shift
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-bench-out}"
CORES="$(nproc)"
CORPUS="${CORPUS:-/tmp/image-search-benchmark-photos}"
mkdir -p "$OUT"

if ! "$PYTHON" -c "import open_clip, faiss, ftfy, regex, dotenv, filelock, tqdm" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps \
    open_clip_torch faiss-cpu ftfy wcwidth regex python-dotenv filelock tqdm packaging
fi
if ! "$PYTHON" -c "from nvidia import nvimgcodec" 2>/dev/null && ls "$WHEELS"/nvidia_nvimgcodec* >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps nvidia-nvimgcodec-cu13 nvidia-nvjpeg
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PYTHON" -c "from image_search.pipeline.device_decoders import available_decoders as a; print('device decoders:', a('cuda'))"

if [ "${TESTS:-1}" = "1" ]; then
  "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu_ingest.py \
    tests/test_fast_ingest.py::test_gpu_decoding_path_matches_reference_on_cpu 2>&1 | tee "$OUT/gpu-tests.log" || true
fi

# (b) and (d) with CPU worker processes and with the threaded reader and each device decoder; one reader thread
# per core, GPU-sized batches. Tens of thousands of files per size: at thousands of images/s, a few thousand would
# mostly time the start.
"$PYTHON" -m evaluation.benchmark_ingest --device cuda --count "${COUNT:-20000}" --distinct "${DISTINCT:-200}" \
  --sizes "${SIZES:-0.3,2,12}" --repeat "${REPEAT:-1}" --batch-size 256 --workers "$CORES" --gpu-decode both \
  --cpu-count "${CPU_COUNT:-2000}" --decode-count "${DECODE_COUNT:-8000}" --naive-count 16 --model-seconds 2 \
  --corpus "$CORPUS" --json "$OUT/ingest-gpu.json" "$@" 2>&1 | tee "$OUT/ingest-gpu.log"

if [ "${PROFILE:-1}" = "1" ]; then
  "$PYTHON" -m evaluation.profile_gpu_decode --sizes "${SIZES:-0.3,2,12}" --corpus "$CORPUS" --batches 256 \
    --json "$OUT/ingest-gpu-profile.json" 2>&1 | tee "$OUT/ingest-gpu-profile.log"
fi

if [ "${MEMORY:-1}" = "1" ]; then
  "$PYTHON" -m evaluation.benchmark_ingest --memory --device cuda --batch-size 256 --workers "$CORES" \
    --corpus "$CORPUS" --json "$OUT/ingest-memory-gpu.json"
fi
