"""Cost of live previews: engine alone vs engine + throttled preview stream.

    python bench/preview_overhead.py [--model SPEC] [--steps 20] [--repeats 7] [--max-fps 10]

Variants, interleaved after warm-up (p50 wall time per generation):
* ``none``: no step callback;
* ``stream``: :class:`PreviewStream` at ``--max-fps`` (latent_rgb, else VAE decode),
  stale frames dropped, rendering on a background thread;
* ``every_step``: the same previewer called synchronously on every step
  (what an unthrottled preview would cost), for contrast.
Writes bench/results/preview_overhead.json.
"""

from __future__ import annotations

import argparse

from _common import add_common_args, choose_model, machine, print_table, summary, timed, write_results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--max-fps", type=float, default=10.0)
    parser.add_argument("--previewer", choices=("auto", "latent_rgb", "vae"), default="auto",
                        help="auto: what the model has; latent_rgb on a model without a matrix uses the SD "
                             "factors as a stand-in (timing only)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    # 1. model, engine, previewer
    from studio.engine import Engine, GenerationRequest
    from studio.engine.preview import LatentPreviewer, PreviewStream

    model, spec = choose_model(args)
    engine = Engine(model)
    previewer = LatentPreviewer(_preview_model(model, args.previewer))
    req = GenerationRequest(prompt="a lighthouse on a cliff at sunset", negative_prompt="blurry", sampler=args.sampler,
                            steps=args.steps, cfg=args.cfg, seed=1, width=args.size, height=args.size,
                            batch_size=args.batch)
    engine.validate(req)
    frames = {"queued": 0, "dropped": 0, "rendered": 0, "runs": 0}

    def run_none():
        engine.generate(req)

    def run_stream():
        with PreviewStream(previewer, sink=lambda image, event: None, max_fps=args.max_fps) as stream:
            engine.generate(req, on_step=stream)
        for key in ("queued", "dropped", "rendered"):
            frames[key] += getattr(stream, key)
        frames["runs"] += 1

    def run_every_step():
        engine.generate(req, on_step=lambda event: previewer.to_image(event.x0_pred))

    # 2. interleaved timing (rotate the order every repeat)
    runners = {"none": run_none, "stream": run_stream, "every_step": run_every_step}
    names = list(runners)
    samples = {name: [] for name in names}
    for r in range(args.warmup + args.repeats):
        if r == args.warmup:
            frames.update(queued=0, dropped=0, rendered=0, runs=0)
        for name in names[r % 3:] + names[:r % 3]:
            seconds = timed(runners[name], model.device)
            if r >= args.warmup:
                samples[name].append(seconds)

    # 3. report
    stats = {name: summary(s) for name, s in samples.items()}
    base = stats["none"]["p50_s"]
    overhead = {name: stats[name]["p50_s"] / base - 1 for name in names}
    per_run = {k: frames[k] / max(1, frames["runs"]) for k in ("queued", "dropped", "rendered")}
    print(f"model={spec} device={model.device} previewer={'vae' if previewer.uses_vae else 'latent_rgb'} "
          f"steps={req.steps} max_fps={args.max_fps}")
    print_table(["variant", "p50 s", "p10 s", "p90 s", "overhead %"],
                [[n, stats[n]["p50_s"], stats[n]["p10_s"], stats[n]["p90_s"], overhead[n] * 100] for n in names])
    print(f"stream frames per run: queued {per_run['queued']:.1f}, rendered {per_run['rendered']:.1f}, "
          f"dropped {per_run['dropped']:.1f}")
    payload = {
        "machine": machine(model.device),
        "settings": {"model": spec, "weights_hash": model.weights_hash, "dtype": str(model.dtype),
                     "sampler": req.sampler, "steps": req.steps, "cfg": req.cfg, "batch": req.batch_size,
                     "size": req.width or model.default_size, "max_fps": args.max_fps,
                     "previewer": "vae" if previewer.uses_vae else "latent_rgb",
                     "repeats": args.repeats, "warmup": args.warmup},
        "figures": {**stats, "overhead_vs_none": overhead, "stream_frames_per_run": per_run},
    }
    path = write_results("preview_overhead", payload, args.out)
    print(f"wrote {path}")
    return payload


def _preview_model(model, choice: str):
    """The model as the previewer should see it (force or stand in a latent_rgb matrix)."""
    import dataclasses

    import torch

    from studio.models import SD_LATENT_RGB

    if choice == "vae":
        return dataclasses.replace(model, latent_rgb=None, latent_rgb_bias=None)
    if choice == "latent_rgb" and model.latent_rgb is None:
        return dataclasses.replace(model, latent_rgb=torch.tensor(SD_LATENT_RGB), latent_rgb_bias=torch.zeros(3))
    return model


if __name__ == "__main__":
    main()
