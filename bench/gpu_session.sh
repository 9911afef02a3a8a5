#!/usr/bin/env bash
# The GPU session of issue 16, as one command: train the demo model on the GPU, score it, then time SD1.5
# 512² and SDXL 1024² (random weights, fp16/bf16) and compare their guidance gradients with fp32.
#
#   OUT=out bash bench/gpu_session.sh                      # on a CUDA machine (about 10 minutes)
#   DEV=cpu AMP=none TRAIN_S=20 BATCH=16 WORKERS=1 CHUNK=16 BUFFER=512 N_EVAL=8 \
#     PERF_ARGS="--models demo --precision --steps 10 --tasks move --reps 1" OUT=/tmp/o bash bench/gpu_session.sh
#                                                         # (a dry run of the same steps on the CPU)
# Writes to $OUT: train.log, quality.log, perf.log, perf_gpu.json and the trained model folder as
# demo.tar.part-* (split into 15 MB pieces: `cat demo.tar.part-* | tar xf -` gives demo/ and quality/).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the output folder}
DEV=${DEV:-cuda}
TRAIN_S=${TRAIN_S:-300}
BATCH=${BATCH:-512}
WORKERS=${WORKERS:-12}
CHUNK=${CHUNK:-256}
BUFFER=${BUFFER:-262144}
AMP=${AMP:-bf16}
N_EVAL=${N_EVAL:-200}
PERF_ARGS=${PERF_ARGS:---models= --gpu-archs --reps 2 --max-seconds 110}
WORK=${WORK:-/tmp/gpu_session}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
if [ -d .whl ]; then  # packages the GPU image lacks (diffusers, kornia), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    && export PYTHONPATH="$WORK/site" || exit 1
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"; } \
  > "$OUT/train.log" 2>&1

# 1. the UNet and text encoder from the seed on the committed autoencoder, for TRAIN_S seconds
timeout $((TRAIN_S + 150)) python3 models/demo/train.py --device "$DEV" --init models/demo/weights --vae-steps 0 \
  --reinit-unet --batch "$BATCH" --unet-lr 1e-3 --unet-warmup 500 --ema 0.999 --amp "$AMP" --workers "$WORKERS" \
  --chunk "$CHUNK" --buffer "$BUFFER" --unet-seconds "$TRAIN_S" --log-every 250 --out "$WORK/demo" >> "$OUT/train.log" 2>&1
rc=$?
echo "train exit $rc" >> "$OUT/train.log"
[ $rc -eq 0 ] || { tail -30 "$OUT/train.log"; exit 1; }

# 2. text-to-image quality of the trained model (the committed number is re-measured on the CPU)
python3 bench/demo_quality.py --device "$DEV" --n "$N_EVAL" --weights "$WORK/demo" \
  --out "$WORK/quality/demo_quality.json" > "$OUT/quality.log" 2>&1
echo "quality exit $?" >> "$OUT/quality.log"
(cd "$WORK" && tar cf - demo quality) | split -b 15m - "$OUT/demo.tar.part-"

# 3. real architectures: timings and the guidance gradient in fp16/bf16 against fp32
timeout 200 python3 bench/perf.py --device "$DEV" $PERF_ARGS --out "$OUT/perf_gpu.json" > "$OUT/perf.log" 2>&1
echo "perf exit $?" >> "$OUT/perf.log"
tail -5 "$OUT/train.log"; grep -E '"(found|color|count)_rate"' "$OUT/quality.log" | head -3; tail -25 "$OUT/perf.log"
