#!/usr/bin/env bash
# Train Tiny World on a lent GPU machine (see the model card), then measure it; results go to $OUT.
# The same stages and code as the CPU recipe; only data size, batch and the time budgets differ (flags below).
# Usage there: bash scripts/train_tinyworld_gpu.sh   (diffusers travels as a wheel in .whl/)
set -uo pipefail
OUT=${OUT:-/tmp/tw_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
W=${WORK:-/tmp/tw}
DEVICE=${DEVICE:-cuda}
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
t0=$(date +%s)
$PY -m studio.tinyworld.train --device "$DEVICE" --workers ${WORKERS:-14} --work-dir $W --out $W/export \
  --n-scenes ${N_SCENES:-200000} --vae-steps ${VAE_STEPS:-20000} --vae-batch 64 --vae-seconds ${VAE_SECONDS:-70} \
  --unet-steps ${UNET_STEPS:-100000} --unet-batch ${UNET_BATCH:-256} --unet-seconds ${UNET_SECONDS:-300} \
  --checkpoint-every ${CKPT_EVERY:-4000} --warmup-steps ${WARMUP:-500} ${EXTRA_ARGS:-} || echo "TRAIN FAILED"
echo "train wall: $(( $(date +%s) - t0 ))s"
# bring back: the EMA weights in fp16, the VAE, the latent statistics, the tokenizer, logs (split: 16 MiB per file)
$PY - "$W" <<'PY'
import sys, torch
w = sys.argv[1]
f = torch.load(f"{w}/unet_final.pt", map_location="cpu")
torch.save({"ema_unet": {k: v.half() for k, v in f["ema_unet"].items()},
            "ema_text": {k: v.half() for k, v in f["ema_text"].items()}, "step": f["step"], "elapsed": f["elapsed"]},
           f"{w}/unet_final_fp16.pt")
lat = torch.load(f"{w}/latents.pt")
lat.pop("latents")
torch.save(lat, f"{w}/latent_stats.pt")
PY
tar czf /tmp/tw_result.tgz -C $W unet_final_fp16.pt vae_final.pt latent_stats.pt tokenizer train.log recipe.json
split -b 15m /tmp/tw_result.tgz "$OUT/tw_result.tgz.part-"
ls -la "$OUT"
$PY bench/tinyworld_quality.py --model $W/export --device "$DEVICE" --cfg ${CFGS:-3 5 7.5} --batch ${BENCH_BATCH:-128} \
  --n-single ${N_SINGLE:-240} --n-pair ${N_PAIR:-120} --n-omitted ${N_OMIT:-60} --out "$OUT/quality.json" --grid "$OUT/grid.png"
echo "total wall: $(( $(date +%s) - t0 ))s"
