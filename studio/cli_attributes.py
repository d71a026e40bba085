"""``python -m studio attributes``: render a slider's values at one seed, one image per value, in order.

A thin caller of :class:`~studio.controllers.attributes.AttributesController` (values go through batched sweeps
of up to 16, all on the same noise). Registered in :data:`studio.cli.COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from studio.cli import PROG, Context, UsageError, _quiet_libraries, _rounded

EPILOG = f"""\
output: DIR/NNN-<attribute>-<value>.png for each value in the order given (NNN = its position), each with
the studio metadata (settings, the slider values, provenance). Existing files of the same name are replaced.

methods: naive   direction from the attribute's phrasing pair, averaged over templates (computed once, cached)
         learned direction fitted with the model's denoising loss; train it with --learn (cached afterwards)
         learned-images  fitted with the denoising loss on example pictures drawn for every value (attributes
                 whose preset has "examples", e.g. Tiny World's size and hue); --learn trains it
         weight  baseline: the attribute's words written into the prompt, weighted by |value| / range

examples:
  {PROG} attributes --list
  {PROG} attributes --prompt "a medium red circle and a medium blue square on a black background" \\
      --subject circle --attribute size --values -1.5,-0.75,0,0.75,1.5 --seed 3 --out-dir sweep
"""


def add_attributes_parser(sub) -> None:
    p = sub.add_parser("attributes", help="slide a subject's attribute (size, hue, age, ...) at a fixed seed",
                       description="Render one image per slider value: a semantic direction added at the "
                                   "subject word's tokens only.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", help="the prompt (must contain the subject word)")
    p.add_argument("--subject", help="the word of the prompt the slider acts on, e.g. circle")
    p.add_argument("--attribute", help="attribute name (see --list)")
    p.add_argument("--values", help="comma-separated slider values, e.g. -2,-1,0,1,2")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0); every value uses the same noise")
    p.add_argument("--method", default="naive", choices=["naive", "learned", "learned-images", "weight"])
    p.add_argument("--delay", type=float, default=0.0, help="fraction of steps run without the slider (0..1)")
    p.add_argument("--local", action="store_true",
                   help="keep everything but the subject as at value 0 (local blending by the subject's attention)")
    p.add_argument("--learn", action="store_true", help="train the learned direction first if it is missing")
    p.add_argument("--learn-steps", type=int,
                   help="training steps for --learn (default: 600 for learned, 1500 for learned-images)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--cfg", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--directions", default="outputs/directions", metavar="DIR",
                   help="where computed directions are cached (default outputs/directions)")
    p.add_argument("--out-dir", metavar="DIR", help="write the images here")
    p.add_argument("--list", action="store_true", help="list the model's attributes and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object describing the results")
    p.set_defaults(handler=cmd_attributes)


def parse_values(text: str | None) -> tuple[float, ...]:
    if not text:
        raise UsageError("--values is required: comma-separated numbers, e.g. -2,-1,0,1,2")
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--values must be comma-separated numbers like -2,-1,0,1,2, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UsageError(f"--values must be finite numbers, got {text!r}")
    if len(values) > 256:
        raise UsageError(f"--values lists {len(values)} values; at most 256")
    return values


def cmd_attributes(args: argparse.Namespace, ctx: Context) -> int:
    t_start = time.perf_counter()
    with _quiet_libraries(enabled=True):
        from studio.controllers import FileSaver
        from studio.controllers.attributes import (
            LEARNED, MAX_SWEEP, AttributeRequest, AttributesController, SliderSetting, SweepRequest,
        )
        from studio.attributes.learning import ImageLearnSettings, LearnSettings
        from studio.engine import InvalidRequest
        from studio.models import ModelLoadError
        from studio.models import load_model as default_loader
        from studio.outputs import OutputsError

        # 1. model and controller
        loader = ctx.load_model or default_loader
        try:
            model = loader(args.model, device=args.device)
        except ModelLoadError as e:
            raise UsageError(str(e)) from None
        controller = AttributesController(model, directions_root=args.directions)
        if args.list:
            for d in controller.definitions():
                print(f"{d.name}\tsubject {d.subject}\trange ±{d.range:g}\t{d.positive} / {d.negative}"
                      f"\t{d.description}", file=ctx.stdout)
            return 0

        # 2. validate everything before any work
        missing = [f"--{n.replace('_', '-')}" for n in ("prompt", "subject", "attribute", "out_dir")
                   if not getattr(args, n)]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (see --list for the model's attributes)")
        values = parse_values(args.values)
        out_dir = Path(args.out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--out-dir {out_dir} exists and is not a folder")
        base = controller.defaults()
        base = replace(base, prompt=args.prompt, seed=args.seed,
                       **{k: v for k, v in (("steps", args.steps), ("cfg", args.cfg)) if v is not None})
        slider = SliderSetting(args.attribute, args.subject, 0.0, args.method)
        try:
            definition = controller.definition(args.attribute)
            for v in values:
                controller.validate(AttributeRequest(base, (replace(slider, value=v),), args.delay, args.local))
            if args.method in LEARNED and not controller.has_learned(definition, args.subject, args.method):
                if not args.learn:
                    raise UsageError(f"no {args.method} direction for {definition.name!r} on {args.subject!r} yet; "
                                     "add --learn to train it first (or use --method naive)")
                kind = ImageLearnSettings if args.method == "learned-images" else LearnSettings
                settings = kind() if args.learn_steps is None else kind(steps=args.learn_steps)
                job = controller.learner(definition, args.subject, settings, cfg=base.cfg)
                job.start()
                while job.running:
                    job.join(1.0)
                    if not args.json:
                        p = job.progress
                        print(f"\rlearning {p.state} {p.step}/{p.total}", end="", file=ctx.stderr, flush=True)
                if not args.json:
                    print(file=ctx.stderr)
                if job.error is not None:
                    raise job.error
        except InvalidRequest as e:
            raise UsageError(f"{e} (model {args.model})") from None

        # 3. render in batched sweeps and save in order
        slug = re.sub(r"[^A-Za-z0-9]+", "_", definition.name).strip("_").lower()
        names = [out_dir / f"{i:03d}-{slug}-{v:+.3f}.png" for i, v in enumerate(values)]
        images, t0 = [], time.perf_counter()
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(values), MAX_SWEEP):
                chunk = values[start:start + MAX_SWEEP]
                paths = iter(names[start:start + len(chunk)])
                saving = controller.with_store(FileSaver(lambda settings, paths=paths: next(paths)))
                result = saving.sweep(SweepRequest(base, slider, chunk, delay=args.delay, local=args.local), save=True)
                for v, path in zip(chunk, result.saved):
                    images.append({"path": str(path), "value": v})
                    if not args.json:
                        print(path, file=ctx.stdout, flush=True)
        except InvalidRequest as e:
            raise UsageError(f"{e} (model {args.model})") from None
        except (OutputsError, OSError) as e:
            print(f"error: could not save the images: {e}", file=ctx.stderr)
            return 1

    if args.json:
        print(json.dumps({"model": args.model, "weights_hash": model.weights_hash, "prompt": args.prompt,
                          "subject": args.subject, "attribute": definition.name, "method": args.method,
                          "delay": args.delay, "local": args.local, "seed": args.seed, "images": images,
                          "paths": [im["path"] for im in images],
                          "timings": _rounded({"generate": time.perf_counter() - t0,
                                               "total": time.perf_counter() - t_start})}), file=ctx.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from studio.cli import main

    sys.exit(main(["attributes", *sys.argv[1:]]))
