#!/usr/bin/env bash
# Ray's overhead on one GPU machine without network access (issue 15), and what checkpoints cost there (issue 17):
# the same files ingested locally and through --ray, then with and without checkpoints.
#
# Needs python with torch, torchvision, numpy, Pillow, pandas and pyarrow installed, a folder of wheels for the rest
# (see gpu_bench.sh) and Ray unpacked from its wheel (ray-site.tar.xz: the wheel's files without the Java jars,
# which keeps it under the device tool's 64 MiB; unpack it with unzip, which keeps the files' modes: Python's
# zipfile drops the executable bits and Ray's gcs_server then cannot start).
#
# Usage: evaluation/ray_bench.sh WHEEL_DIR RAY_SITE_TAR
# Environment: PYTHON (python3), OUT (bench-out), COUNT (120000 files: each Ray ingest starts actors and loads the
#              model, seconds that tens of thousands of files make small), BLOCKS (Ray block sizes to compare),
#              AT_ONCE (blocks an actor embeds at once, to compare), CHECKPOINT_COUNT (30000), CHECKPOINT_REPEAT (2),
#              RAY_SECONDS / CHECKPOINT_SECONDS / PROFILE_SECONDS (each step's time limit), STEPS (which of
#              "ray checkpoint profile" to run: all three by default; a device call is limited to 10 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="$1"
RAY_SITE="$2"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-bench-out}"
CORES="$(nproc)"
mkdir -p "$OUT" /tmp/site
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
tar -xJf "$RAY_SITE" -C /tmp/site
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
# A user's pip compiles each module's bytecode as it installs. Installed here with --no-compile, beside a read-only
# image, every new process compiled ~1,700 modules again, each Ray actor's among them (3.8 s of its start on the
# H200, evaluation/results/ray-start-h200.json); kept in one writable place, they are compiled once.
export PYTHONPYCACHEPREFIX=/tmp/pycache
unset PYTHONDONTWRITEBYTECODE
"$PYTHON" -c "import ray, torch; print('ray', ray.__version__, torch.cuda.get_device_name(0))"

STEPS="${STEPS:-ray checkpoint profile}"
if [[ " $STEPS " == *" ray "* ]]; then
timeout "${RAY_SECONDS:-330}" "$PYTHON" -m evaluation.benchmark_ingest --ray-overhead --device cuda --sizes 2 --count "${COUNT:-120000}" \
  --distinct 200 --batch-size 256 --workers "$CORES" ${BLOCKS:+--ray-block-files "$BLOCKS"} \
  ${AT_ONCE:+--ray-blocks-at-once "$AT_ONCE"} --corpus /tmp/corpus --json "$OUT/ingest-ray-h200.json" 2>&1 \
  | grep --line-buffered -v -E "authentication_token|core_worker.cc" | tee "$OUT/ray-h200.log" || echo "(the Ray step failed or ran out of time)"
fi

if [[ " $STEPS " == *" checkpoint "* ]]; then
timeout "${CHECKPOINT_SECONDS:-130}" "$PYTHON" -m evaluation.benchmark_ingest --checkpoint-cost --device cuda --sizes 2 \
  --count "${CHECKPOINT_COUNT:-30000}" --repeat "${CHECKPOINT_REPEAT:-2}" --distinct 200 --batch-size 256 --workers "$CORES" --corpus /tmp/corpus --json "$OUT/checkpoint-cost-h200.json" \
  2>&1 | tee "$OUT/checkpoint-cost-h200.log" || echo "(the checkpoint step failed or ran out of time)"
fi

# where the fixed start of each ingest through Ray goes (a new process: torch, CUDA, the model; Ray Data's start)
if [[ " $STEPS " == *" profile "* ]]; then
timeout "${PROFILE_SECONDS:-100}" "$PYTHON" -m evaluation.profile_ray_start --device cuda --json "$OUT/ray-start-h200.json" \
  2>&1 | grep --line-buffered -v -E "authentication_token|core_worker.cc|INFO" | tee "$OUT/ray-start-h200.log" || echo "(the profile failed or ran out of time)"
fi
