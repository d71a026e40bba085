"""Engine vs StableDiffusionPipeline on the same model and settings.

    python bench/engine_speed.py [--model SPEC] [--steps 20] [--repeats 7] [--device cuda]

Runs are interleaved (the order alternates every repeat) after warm-up; p50 of
wall time per full generation (encode + denoise + decode + PIL). Writes
bench/results/engine_speed.json.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import add_common_args, choose_model, machine, print_table, summary, timed, write_results


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

    # 3. interleaved timing
    runners = {"engine": run_engine, "pipeline": run_pipeline}
    samples = {name: [] for name in runners}
    for r in range(args.warmup + args.repeats):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            seconds = timed(runners[name], model.device)
            if r >= args.warmup:
                samples[name].append(seconds)

    # 4. report
    stats = {name: summary(s) for name, s in samples.items()}
    ratio = stats["engine"]["p50_s"] / stats["pipeline"]["p50_s"]
    rows = [[name, s["p50_s"], s["p10_s"], s["p90_s"], s["p50_s"] / req.steps * 1000] for name, s in stats.items()]
    print(f"model={spec} device={model.device} dtype={model.dtype} sampler={req.sampler} steps={req.steps} "
          f"cfg={req.cfg} batch={req.batch_size} size={req.width or model.default_size}")
    print_table(["impl", "p50 s", "p10 s", "p90 s", "p50 ms/step"], rows)
    print(f"engine/pipeline p50 ratio: {ratio:.3f}   max |uint8 diff| engine vs pipeline: {max_diff}")
    payload = {
        "machine": machine(model.device),
        "settings": {"model": spec, "weights_hash": model.weights_hash, "dtype": str(model.dtype),
                     "sampler": req.sampler, "steps": req.steps, "cfg": req.cfg, "batch": req.batch_size,
                     "size": req.width or model.default_size, "repeats": args.repeats, "warmup": args.warmup},
        "figures": {**stats, "engine_over_pipeline_p50": ratio, "max_uint8_diff": max_diff},
    }
    path = write_results("engine_speed", payload, args.out)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
