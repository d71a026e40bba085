"""Engine vs StableDiffusionPipeline on the same model and settings.

    python bench/engine_speed.py [--model SPEC] [--steps 20] [--repeats 7] [--device cuda]

Runs are interleaved (the order alternates every repeat) after warm-up; p50 of
wall time and of process CPU time per full generation (encode + denoise + decode
+ PIL). A third figure isolates each side's own cost: the same runs with the
UNet replaced by a stub returning zeros (loop, guidance, scheduler, encode,
decode, PIL), which a busy machine disturbs least. Writes
bench/results/engine_speed.json.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

import numpy as np
import torch

from _common import add_common_args, choose_model, machine, print_table, summary, timed2, write_results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    # 1. model, engine and the reference pipeline on the same modules
    from studio.engine import Engine, GenerationRequest, make_scheduler
    from studio.models import as_pipeline

    model, spec = choose_model(args)
    engine = Engine(model)
    req = GenerationRequest(prompt="a lighthouse on a cliff at sunset", negative_prompt="blurry", sampler=args.sampler,
                            steps=args.steps, cfg=args.cfg, seed=1, width=args.size, height=args.size,
                            batch_size=args.batch)
    engine.validate(req)
    pipe = as_pipeline(model, make_scheduler(model.scheduler_config, req.sampler))

    def run_engine():
        return engine.generate(req)

    def run_pipeline():
        gens = [torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.batch_size)]
        return pipe(prompt=req.prompt, negative_prompt=req.negative_prompt, num_inference_steps=req.steps,
                    guidance_scale=req.cfg, num_images_per_prompt=req.batch_size, generator=gens,
                    height=req.height, width=req.width).images

    # 2. same output?
    ours = [np.asarray(im, dtype=np.int16) for im in run_engine().images]
    theirs = [np.asarray(im, dtype=np.int16) for im in run_pipeline()]
    max_diff = int(max(np.abs(a - b).max() for a, b in zip(ours, theirs)))

    # 3. interleaved timing, then the same with the UNet stubbed out
    runners = {"engine": run_engine, "pipeline": run_pipeline}
    wall, cpu = interleaved(runners, args.warmup, args.repeats, model.device)
    with unet_stubbed(model.unet):
        stub_wall, _ = interleaved(runners, 1, max(args.repeats, 15), model.device)

    # 4. report
    stats = {name: {"wall": summary(wall[name]), "cpu": summary(cpu[name]), "unet_stubbed": summary(stub_wall[name])}
             for name in runners}
    ratios = {kind: stats["engine"][kind]["p50_s"] / stats["pipeline"][kind]["p50_s"]
              for kind in ("wall", "cpu", "unet_stubbed")}
    rows = [[name, s["wall"]["p50_s"], s["wall"]["p10_s"], s["wall"]["p90_s"], s["cpu"]["p50_s"],
             s["unet_stubbed"]["p50_s"] * 1000] for name, s in stats.items()]
    print(f"model={spec} device={model.device} dtype={model.dtype} sampler={req.sampler} steps={req.steps} "
          f"cfg={req.cfg} batch={req.batch_size} size={req.width or model.default_size}")
    print_table(["impl", "wall p50 s", "wall p10 s", "wall p90 s", "cpu p50 s", "no-UNet p50 ms"], rows)
    print("engine/pipeline p50 ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
          + f"   max |uint8 diff|: {max_diff}")
    payload = {
        "machine": machine(model.device),
        "settings": {"model": spec, "weights_hash": model.weights_hash, "dtype": str(model.dtype),
                     "sampler": req.sampler, "steps": req.steps, "cfg": req.cfg, "batch": req.batch_size,
                     "size": req.width or model.default_size, "repeats": args.repeats, "warmup": args.warmup},
        "figures": {**stats, "engine_over_pipeline_p50": ratios, "max_uint8_diff": max_diff},
    }
    path = write_results("engine_speed", payload, args.out)
    print(f"wrote {path}")
    return payload


def interleaved(runners: dict, warmup: int, repeats: int, device) -> tuple[dict, dict]:
    """Run each runner ``warmup + repeats`` times, alternating the order; return
    ({name: wall seconds}, {name: cpu seconds}) for the timed repeats."""
    wall = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for r in range(warmup + repeats):
        for name in (list(runners) if r % 2 == 0 else list(reversed(runners))):
            w, c = timed2(runners[name], device)
            if r >= warmup:
                wall[name].append(w)
                cpu[name].append(c)
    return wall, cpu


@contextmanager
def unet_stubbed(unet):
    """Replace the UNet's forward by zeros of the input's shape (removed in finally)."""
    unet.forward = lambda sample, *args, **kwargs: (torch.zeros_like(sample),)
    try:
        yield
    finally:
        del unet.forward


if __name__ == "__main__":
    main()
