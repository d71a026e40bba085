"""``python -m studio inspect``: the inspection workbench from the command line.

A thin caller of :class:`~studio.controllers.inspect.InspectionController`. Registered in :data:`studio.cli.COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from studio.cli import PROG, Context, UsageError, _quiet_libraries, _rounded, check_sampler, read_image_arg

EPILOG = f"""\
actions:
  attention    generate, recording cross-attention: DIR/<word>.npy (the DAAM map of each word of the prompt,
               image-sized float32), DIR/<word>.png (overlay on the image), DIR/image.png, DIR/attention.json
  trajectory   generate, recording every step: DIR/trajectory.npz (x_t, x0 per step), x0/x_t .webp and .gif
               (animated), filmstrip.png, guidance_norm.png, guidance_cosine.png, guidance.json, image.png
  classify     rank --candidates by denoising error on --image (diffusion classifier); prints the ranking
  information  per-pixel information of one or two words (--tokens) of --prompt about --image: DIR/*.npy, *.png

examples:
  {PROG} inspect attention --prompt "a large red circle on a black background" --seed 3 --out-dir maps
  {PROG} inspect classify --image scene.png --candidates "a red circle|a blue circle|a green circle" --json
  {PROG} inspect trajectory --prompt "a blue square" --seed 1 --out-dir traj
  {PROG} inspect information --image scene.png --prompt "a red circle" --tokens red,circle --out-dir info
"""


def add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="attention maps, trajectories, diffusion classifier, information maps",
                       description="Look inside a run: see where words attend, how the prediction evolves, which "
                                   "prompt an image fits best, and which pixels a word informs.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["attention", "trajectory", "classify", "information"])
    p.add_argument("--prompt", help="the prompt (attention, trajectory, information)")
    p.add_argument("--negative", default="", help="negative prompt (attention, trajectory)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--cfg", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--sampler", help="sampler (default: the model's)")
    p.add_argument("--image", help="image file to classify or explain (classify, information)")
    p.add_argument("--candidates", help="candidate prompts separated by '|' (classify)")
    p.add_argument("--stages", default="12:2,36:1",
                   help="classifier stages samples:keep,... (default 12:2,36:1: 12 noise samples for every "
                        "candidate, keep the best 2, bring those to 36 samples, keep 1)")
    p.add_argument("--tokens", help="one or two words of --prompt, comma-separated (information)")
    p.add_argument("--levels", type=int, default=12, help="noise levels for information maps (default 12)")
    p.add_argument("--samples", type=int, default=2, help="noise samples per level (default 2)")
    p.add_argument("--space", default="pixel", choices=["pixel", "latent"],
                   help="information maps from decoded predictions (pixel, default) or the upsampled latent grid")
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--out-dir", metavar="DIR", help="write the files here (not needed for classify)")
    p.add_argument("--json", action="store_true", help="print one JSON object describing the results")
    p.set_defaults(handler=cmd_inspect)


def parse_stages(text: str):
    from studio.engine import InvalidRequest
    from studio.inspection.classifier import parse_stages as parse

    try:
        return parse(text)
    except InvalidRequest as e:
        raise UsageError(str(e).replace("stages must", "--stages must", 1)) from None


def _need(args, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n)]
    if missing:
        raise UsageError(f"inspect {args.action} needs {', '.join(missing)}")


def cmd_inspect(args: argparse.Namespace, ctx: Context) -> int:
    t_start = time.perf_counter()
    with _quiet_libraries(enabled=True):
        import numpy as np

        from studio.controllers.inspect import (
            ClassifyRequest, InformationRequest, InspectionController, InspectRequest,
        )
        from studio.inspection.files import npy_bytes, png_bytes, write_files
        from studio.engine import InvalidRequest
        from studio.inspection.figures import overlay
        from studio.models import ModelLoadError
        from studio.models import load_model as default_loader

        # 1. validate what needs no model
        action = args.action
        if action in ("attention", "trajectory"):
            _need(args, "prompt", "out_dir")
        elif action == "classify":
            _need(args, "image", "candidates")
        else:
            _need(args, "image", "prompt", "tokens", "out_dir")
        out_dir = Path(args.out_dir) if args.out_dir else None
        if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--out-dir {out_dir} exists and is not a folder")
        image = read_image_arg(args.image, "image").convert("RGB") if args.image else None
        stages = parse_stages(args.stages) if action == "classify" else None
        if args.sampler:
            args.sampler = check_sampler(args.sampler)

        # 2. model and controller
        loader = ctx.load_model or default_loader
        try:
            model = loader(args.model, device=args.device)
        except ModelLoadError as e:
            raise UsageError(str(e)) from None
        controller = InspectionController(model)
        report: dict = {"model": args.model, "weights_hash": model.weights_hash, "action": action}
        try:
            # 3. the action
            if action in ("attention", "trajectory"):
                base = replace(controller.defaults(), prompt=args.prompt, negative_prompt=args.negative,
                               seed=args.seed, **{k: v for k, v in (("steps", args.steps), ("cfg", args.cfg),
                                                                    ("sampler", args.sampler)) if v is not None})
                run = controller.run(InspectRequest(base, attention=action == "attention"))
                files = {"image.png": png_bytes(run.image)}
                if action == "attention":
                    for word in run.words:
                        m = controller.word_map(run, word).astype(np.float32)
                        files[f"{word}.npy"] = npy_bytes(m)
                        files[f"{word}.png"] = png_bytes(overlay(run.image, m, 0.6).resize(
                            (max(256, run.image.width),) * 2, 0))
                    paths = write_files(out_dir, files) + controller.export(run, "attention", out_dir)
                    report["words"] = {w: list(i) for w, i in run.words.items()}
                else:
                    paths = write_files(out_dir, files) + controller.export(run, "trajectory", out_dir) + \
                        controller.export(run, "guidance", out_dir)
                    stats = controller.guidance(run)
                    report["guidance"] = stats.to_json()
                report.update(seed=run.request.seed, paths=[str(p) for p in paths],
                              timings=_rounded(run.timings))
                if not args.json:
                    for p in paths:
                        print(p, file=ctx.stdout)
            elif action == "classify":
                candidates = tuple(c.strip() for c in args.candidates.split("|") if c.strip())
                result = controller.classify(ClassifyRequest(image, candidates, stages=stages, seed=args.seed))
                report.update(result.to_json())
                if out_dir is not None:
                    report["paths"] = [str(p) for p in controller.export_classification(result, out_dir)]
                if not args.json:
                    for rank, k in enumerate(result.ranking, 1):
                        print(f"{rank}\t{result.mean_error[k]:.5f}\t{result.candidates[k]}", file=ctx.stdout)
                    print(f"best: {result.best} ({result.evaluations} UNet evaluations)", file=ctx.stdout)
            else:
                tokens = tuple(t.strip() for t in args.tokens.split(",") if t.strip())
                result = controller.information(InformationRequest(image, args.prompt, tokens, levels=args.levels,
                                                                   samples=args.samples, seed=args.seed,
                                                                   space=args.space))
                files = {f"{name}.npy": npy_bytes(m.numpy().astype(np.float32)) for name, m in result.maps.items()}
                paths = write_files(out_dir, files) + controller.export_information(result, image, out_dir)
                report.update(result.to_json(), paths=[str(p) for p in paths])
                if not args.json:
                    for name, m in result.maps.items():
                        print(f"{name}\ttotal {float(m.sum()):.4f} nats", file=ctx.stdout)
                    for p in paths:
                        print(p, file=ctx.stdout)
        except InvalidRequest as e:
            raise UsageError(f"{e} (model {args.model})") from None
        except OSError as e:
            print(f"error: could not write the files: {e}", file=ctx.stderr)
            return 1

    if args.json:
        report.setdefault("timings", {})["total"] = round(time.perf_counter() - t_start, 3)
        print(json.dumps(report), file=ctx.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from studio.cli import main

    sys.exit(main(["inspect", *sys.argv[1:]]))
