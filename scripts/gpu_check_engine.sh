#!/bin/bash
# Device check for the engine: GPU tests + benchmarks on a full-size random SD1 model (results to $OUT).
# Carry .whl/ holding diffusers, importlib_metadata and transformers wheels (see the device tool README).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi -L
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.get_device_name())"
python3 -m pytest tests/test_engine_cuda.py tests/test_engine.py tests/test_engine_preview.py tests/test_models.py -q -p no:warnings -p no:cacheprovider 2>&1 | tee $OUT/pytest.log | tail -25
mkdir -p $OUT/r
python3 bench/engine_speed.py --model random:sd1-full --device cuda --steps 20 --repeats 7 --out $OUT/r/engine_speed.json 2>&1 | grep -v -i warn | tee $OUT/engine_speed.log
python3 bench/preview_overhead.py --model random:sd1-full --device cuda --steps 20 --repeats 7 --out $OUT/r/preview_overhead.json 2>&1 | grep -v -i warn | tee $OUT/preview_overhead.log
python3 bench/preview_overhead.py --model random:sd1-full --device cuda --steps 20 --repeats 5 --previewer vae --out $OUT/r/preview_overhead_vae.json 2>&1 | grep -v -i warn | tee $OUT/preview_overhead_vae.log
