"""``python -m studio edit``: img2img, inpainting and outpainting from the command line.

A thin caller of :class:`~studio.controllers.edit.EditingController`. Registered in :data:`studio.cli.COMMANDS`.
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
modes:
  img2img   re-imagine --image under --prompt; --strength is the fraction of steps run (0.6 default)
  inpaint   repaint the white (or opaque) part of --mask; --feather softens its edge (pixels, default 4);
            outside the mask the output is the input's pixels
  outpaint  extend --image by --pixels on --side (left/right/top/bottom) and paint the new area

The image must have a size the model takes (Tiny World: multiples of 16 in 32..256). --out FILE (.png) gets the
studio metadata (settings, the editing settings, provenance); --json prints one JSON object.

examples:
  {PROG} edit img2img --image scene.png --prompt "a blue circle on a black background" --strength 0.6 --out blue.png
  {PROG} edit inpaint --image scene.png --mask mask.png --prompt "a blue square" --seed 3 --out painted.png
  {PROG} edit outpaint --image scene.png --side right --pixels 32 --prompt "a green triangle" --out wide.png
"""


def add_edit_parser(sub) -> None:
    p = sub.add_parser("edit", help="img2img, inpainting and outpainting of an image",
                       description="Change part of an image and keep the rest.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["img2img", "inpaint", "outpaint"])
    p.add_argument("--image", required=True, help="the input image (PNG, JPEG or WebP)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="")
    p.add_argument("--mask", help="inpaint: the mask image (white or opaque = repaint)")
    p.add_argument("--strength", type=float, help="fraction of steps run (img2img default 0.6, inpaint 1.0)")
    p.add_argument("--feather", type=float, default=4.0, help="mask edge softness in pixels (default 4)")
    p.add_argument("--side", default="right", choices=["left", "right", "top", "bottom"], help="outpaint side")
    p.add_argument("--pixels", type=int, default=16, help="outpaint: how far to extend (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--sampler")
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--device")
    p.add_argument("--out", required=True, metavar="FILE", help="write the result here (.png)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_edit)


def cmd_edit(args: argparse.Namespace, ctx: Context) -> int:
    t_start = time.perf_counter()
    with _quiet_libraries(enabled=True):
        from studio.controllers import FileSaver
        from studio.controllers.edit import EditingController, Img2ImgRequest, InpaintRequest, OutpaintRequest
        from studio.engine import InvalidRequest
        from studio.models import ModelLoadError
        from studio.models import load_model as default_loader
        from studio.outputs import OutputsError

        # 1. validate what needs no model
        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise UsageError(f"--out must be a .png file (it carries the settings), got {out}")
        if out.exists() and out.is_dir():
            raise UsageError(f"--out {out} is a folder")
        if args.mode == "inpaint" and not args.mask:
            raise UsageError("edit inpaint needs --mask (white or opaque = repaint)")
        image = read_image_arg(args.image, "image").convert("RGB")
        mask = read_image_arg(args.mask, "mask") if args.mode == "inpaint" else None
        sampler = check_sampler(args.sampler) if args.sampler else None

        # 2. model and controller (saving to --out)
        loader = ctx.load_model or default_loader
        try:
            model = loader(args.model, device=args.device)
        except ModelLoadError as e:
            raise UsageError(str(e)) from None
        controller = EditingController(model, FileSaver(lambda settings: out))
        base = replace(controller.defaults(), prompt=args.prompt, negative_prompt=args.negative, seed=args.seed,
                       **{k: v for k, v in (("steps", args.steps), ("cfg", args.cfg), ("sampler", sampler))
                          if v is not None})
        try:
            if args.mode == "img2img":
                request = Img2ImgRequest(base, image, 0.6 if args.strength is None else args.strength)
                outcome = controller.img2img(request)
            elif args.mode == "inpaint":
                request = InpaintRequest(base, image, mask, args.feather, 1.0 if args.strength is None else
                                         args.strength)
                outcome = controller.inpaint(request)
            else:
                outcome = controller.outpaint(OutpaintRequest(base, image, args.side, args.pixels, args.feather))
        except InvalidRequest as e:
            raise UsageError(f"{e} (model {args.model})") from None
        except (OutputsError, OSError) as e:
            print(f"error: could not save the image: {e}", file=ctx.stderr)
            return 1

    if args.json:
        print(json.dumps({"model": args.model, "weights_hash": model.weights_hash, "mode": args.mode,
                          "path": str(out), "seed": outcome.request.seed,
                          "size": [outcome.request.width, outcome.request.height],
                          "warnings": list(outcome.warnings),
                          "timings": _rounded({**outcome.timings, "total": time.perf_counter() - t_start})}),
              file=ctx.stdout)
    else:
        print(out, file=ctx.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from studio.cli import main

    sys.exit(main(["edit", *sys.argv[1:]]))
