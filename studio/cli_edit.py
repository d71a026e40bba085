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
  invert    DDIM inversion of --image under --prompt (--steps, default 50) and its reconstruction, written to
            --out; prints the reconstruction's PSNR against the input. --null-text also optimises the
            unconditional embedding per step (--inner-steps, default 10) so the reconstruction holds at --cfg
  p2p       prompt-to-prompt: render --prompt and --target on the same noise, the target's attention controlled by
            the source's (--cross, --self fractions of the steps; --reweight word:factor; --no-blend;
            --blend-mask auto|attention|contrast: the local-blend mask from the blend words' attention, or
            DiffEdit's noise contrast of the two prompts on the source, estimated by a half render; auto (the
            default) takes the contrast when the prompts differ and no --blend-words are given; --mask-grow N widens
            the contrast mask by N latent pixels, default 1 for --image and 0 otherwise); writes
            the source to --out and the edit next to it as <out>-edit.png. With --image, edits that real image:
            it is inverted under --prompt first (its caption; DDIM, --steps default 50, --null-text as above)
  concept   closed-form concept edit of the model: --edit "old -> new" (repeatable; "old ->" erases),
            --preserve "a, b" concepts to keep, --method uce|quickfix, --lambda L (regulariser); or --delta FILE to load a
            saved edit, or --preset NAME (a shipped edit, see presets/concepts). --save-delta FILE writes the edit
            (.safetensors, a few hundred KB at most). With --prompt, renders it before (--out) and after the
            edit (<out>-edit.png) on the same seed; the model files are never changed

The image must have a size the model takes (Tiny World: multiples of 16 in 32..256). --out FILE (.png) gets the
studio metadata (settings, the editing settings, provenance); --json prints one JSON object.

examples:
  {PROG} edit img2img --image scene.png --prompt "a blue circle on a black background" --strength 0.6 --out blue.png
  {PROG} edit inpaint --image scene.png --mask mask.png --prompt "a blue square" --seed 3 --out painted.png
  {PROG} edit outpaint --image scene.png --side right --pixels 32 --prompt "a green triangle" --out wide.png
  {PROG} edit p2p --prompt "a red circle on a black background" --target "a blue circle on a black background" \
      --seed 3 --out swap.png
  {PROG} edit concept --edit "circle -> square" --preserve "triangle, square" --save-delta no-circles.safetensors \
      --prompt "a large red circle" --seed 3 --out before.png
"""


def add_edit_parser(sub) -> None:
    p = sub.add_parser("edit", help="img2img, inpainting and outpainting of an image",
                       description="Change part of an image and keep the rest.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["img2img", "inpaint", "outpaint", "invert", "p2p", "concept"])
    p.add_argument("--image", help="the input image (PNG, JPEG or WebP); for p2p a real image to invert and edit")
    p.add_argument("--prompt", help="required except for 'concept' with --save-delta only")
    p.add_argument("--negative", default="")
    p.add_argument("--mask", help="inpaint: the mask image (white or opaque = repaint)")
    p.add_argument("--strength", type=float, help="fraction of steps run (img2img default 0.6, inpaint 1.0)")
    p.add_argument("--feather", type=float, default=4.0, help="mask edge softness in pixels (default 4)")
    p.add_argument("--side", default="right", choices=["left", "right", "top", "bottom"], help="outpaint side")
    p.add_argument("--pixels", type=int, default=16, help="outpaint: how far to extend (default 16)")
    p.add_argument("--target", help="p2p: the edited prompt")
    p.add_argument("--cross", type=float, default=0.8, help="p2p: fraction of steps with cross-attention injected")
    p.add_argument("--self", dest="self_fraction", type=float, default=0.4,
                   help="p2p: fraction of steps with self-attention injected")
    p.add_argument("--reweight", action="append", default=[], metavar="WORD:FACTOR",
                   help="p2p: scale the attention on a word of --target (repeatable)")
    p.add_argument("--no-blend", action="store_true", help="p2p: no local blending")
    p.add_argument("--blend-words", default="", metavar="W1,W2",
                   help="p2p: words whose attention makes the local-blend mask (default: the words that differ)")
    p.add_argument("--blend-mask", default="auto", choices=["auto", "attention", "contrast"],
                   help="p2p: where the local-blend mask comes from: the blend words' cross-attention (the paper's) "
                        "or the two prompts' noise-prediction contrast on the source (DiffEdit); auto (default): the "
                        "contrast when the prompts differ and no --blend-words are given, else the attention")
    p.add_argument("--mask-grow", type=int, default=None, metavar="N",
                   help="p2p --blend-mask contrast: widen the mask by N (0..4) latent pixels (default: 1 for a "
                        "real --image, 0 for a generated source)")
    p.add_argument("--null-text", action="store_true", help="invert, p2p --image: null-text optimisation")
    p.add_argument("--inner-steps", type=int, default=10, help="null-text: Adam steps per sampling step (at most)")
    p.add_argument("--edit", dest="edits", action="append", default=[], metavar="OLD->NEW",
                   help="concept: replace OLD by NEW ('OLD ->' erases); repeatable")
    p.add_argument("--preserve", default="", help="concept: comma-separated concepts to keep as they are")
    p.add_argument("--method", default="uce", choices=["uce", "quickfix"], help="concept: UCE or Diff-QuickFix")
    p.add_argument("--lambda", dest="edit_lambda", type=float, metavar="LAMBDA",
                   help="concept: regulariser lambda (default: uce 0.5, quickfix 0.01)")
    p.add_argument("--preserve-weight", type=float, default=1.0, help="concept: weight of the preserved concepts")
    p.add_argument("--preset", help="concept: a shipped edit by name (presets/concepts)")
    p.add_argument("--delta", help="concept: load a saved edit instead of computing one")
    p.add_argument("--save-delta", help="concept: write the edit here (.safetensors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--sampler")
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--device")
    p.add_argument("--out", metavar="FILE", help="write the result here (.png)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_edit)


def cmd_edit(args: argparse.Namespace, ctx: Context) -> int:
    t_start = time.perf_counter()
    with _quiet_libraries(enabled=True):
        from studio.controllers import FileSaver
        from studio.controllers.edit import (
            EditingController, Img2ImgRequest, InpaintRequest, InversionRequest, OutpaintRequest,
            PromptToPromptRequest,
        )
        from studio.engine import InvalidRequest
        from studio.models import ModelLoadError
        from studio.models import load_model as default_loader
        from studio.outputs import OutputsError

        # 1. validate what needs no model
        if args.mode == "concept":
            return _cmd_concept(args, ctx, t_start)
        if not args.prompt:
            raise UsageError(f"edit {args.mode} needs --prompt")
        if not args.out:
            raise UsageError(f"edit {args.mode} needs --out FILE.png")
        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise UsageError(f"--out must be a .png file (it carries the settings), got {out}")
        if out.exists() and out.is_dir():
            raise UsageError(f"--out {out} is a folder")
        if args.mode == "inpaint" and not args.mask:
            raise UsageError("edit inpaint needs --mask (white or opaque = repaint)")
        if args.mode == "p2p" and not args.target:
            raise UsageError("edit p2p needs --target (the edited prompt)")
        if args.mode != "p2p" and not args.image:
            raise UsageError(f"edit {args.mode} needs --image")
        reweight = tuple(_reweight(r) for r in args.reweight)
        image = read_image_arg(args.image, "image").convert("RGB") if args.image else None
        mask = read_image_arg(args.mask, "mask") if args.mode == "inpaint" else None
        sampler = check_sampler(args.sampler) if args.sampler else None

        # 2. model and controller (saving to --out)
        loader = ctx.load_model or default_loader
        try:
            model = loader(args.model, device=args.device)
        except ModelLoadError as e:
            raise UsageError(str(e)) from None
        paths = iter([out, out.with_name(out.stem + "-edit.png")])
        controller = EditingController(model, FileSaver(lambda settings: next(paths)))
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
            elif args.mode == "outpaint":
                outcome = controller.outpaint(OutpaintRequest(base, image, args.side, args.pixels, args.feather))
            elif args.mode == "invert":
                steps = base.steps if args.steps is not None else 50
                inverted = controller.invert(InversionRequest(replace(base, steps=steps), image, args.null_text,
                                                              args.inner_steps), save=True)
                how = f"{steps} DDIM steps" + (f", null-text at CFG {inverted.request.cfg:g}" if args.null_text else
                                               ", CFG 1")
                print(json.dumps({"mode": "invert", "path": str(out), "steps": steps, "null_text": args.null_text,
                                  "cfg": inverted.request.cfg, "psnr_db": round(inverted.psnr_db, 3),
                                  "timings": _rounded(dict(inverted.timings))}) if args.json else
                      f"{out}\nreconstruction PSNR {inverted.psnr_db:.2f} dB ({how})", file=ctx.stdout)
                return 0
            else:
                inverted = None
                if image is not None:  # a real image: invert it (not saved), then edit
                    steps = base.steps if args.steps is not None else 50
                    inverted = controller.invert(InversionRequest(replace(base, steps=steps), image, args.null_text,
                                                                  args.inner_steps))
                outcome = controller.prompt_to_prompt(PromptToPromptRequest(
                    base, args.target, args.cross, args.self_fraction, reweight, not args.no_blend,
                    blend_words=tuple(w.strip() for w in args.blend_words.split(",") if w.strip()),
                    inverted=inverted, blend_mask=args.blend_mask, mask_grow=args.mask_grow))
        except InvalidRequest as e:
            raise UsageError(f"{e} (model {args.model})") from None
        except (OutputsError, OSError) as e:
            print(f"error: could not save the image: {e}", file=ctx.stderr)
            return 1

    written = [str(getattr(p, "path", p)) for p in outcome.saved]
    if args.json:
        print(json.dumps({"model": args.model, "weights_hash": model.weights_hash, "mode": args.mode,
                          "path": str(out), "paths": written, "seed": outcome.request.seed,
                          "size": [outcome.request.width, outcome.request.height],
                          "warnings": list(getattr(outcome, "warnings", ())),
                          "timings": _rounded({**outcome.timings, "total": time.perf_counter() - t_start})}),
              file=ctx.stdout)
    else:
        print("\n".join(written), file=ctx.stdout)
    return 0


def _cmd_concept(args: argparse.Namespace, ctx: Context, t_start: float) -> int:
    """``edit concept``: compute (or load) a concept edit, save it, render a prompt before and after."""
    from studio.controllers import FileSaver
    from studio.controllers.edit import EditingController
    from studio.editing.concepts import ConceptEditSpec, parse_concepts, parse_edits
    from studio.engine import InvalidRequest
    from studio.models import ModelLoadError
    from studio.models import load_model as default_loader
    from studio.outputs import OutputsError
    from studio.presets import PresetError

    # 1. validate what needs no model
    sources = [bool(args.edits), bool(args.delta), bool(args.preset)]
    if sum(sources) != 1:
        raise UsageError("edit concept needs exactly one of --edit OLD->NEW, --delta FILE or --preset NAME")
    if not args.prompt and not args.save_delta:
        raise UsageError("edit concept needs --prompt (to render before/after) or --save-delta FILE (or both)")
    out = Path(args.out) if args.out else None
    if args.prompt and (out is None or out.suffix.lower() != ".png"):
        raise UsageError("with --prompt, --out must name a .png file (it carries the settings)")
    if args.save_delta and not args.save_delta.endswith(".safetensors"):
        raise UsageError(f"--save-delta must be a .safetensors file, got {args.save_delta}")
    if args.delta and not Path(args.delta).is_file():
        raise UsageError(f"--delta {args.delta}: no such file")
    sampler = check_sampler(args.sampler) if args.sampler else None
    try:
        edits = parse_edits("\n".join(args.edits))
        preserve = parse_concepts(args.preserve)
    except InvalidRequest as e:
        raise UsageError(str(e)) from None

    # 2. model, controller and the edit
    loader = ctx.load_model or default_loader
    try:
        model = loader(args.model, device=args.device)
    except ModelLoadError as e:
        raise UsageError(str(e)) from None
    paths = iter([out, out.with_name(out.stem + "-edit.png")] if out else [])
    controller = EditingController(model, FileSaver(lambda settings: next(paths)))
    try:
        if args.delta:
            edited = controller.load_concept_edit(args.delta)
        else:
            templates, presets = controller.concept_presets()
            if args.preset:
                named = {p.name: p for p in presets}
                if args.preset not in named:
                    raise UsageError(f"--preset {args.preset!r} is not a shipped edit for this model; choose from: "
                                     + (", ".join(repr(n) for n in named) or "(none)"))
                spec = named[args.preset].spec
            else:
                spec = ConceptEditSpec(method=args.method, edits=edits, preserve=preserve,
                                       strength=args.edit_lambda, templates=templates,
                                       preserve_weight=args.preserve_weight)
            edited = controller.edit_concepts(spec)
        saved_delta = str(controller.save_concept_edit(edited, args.save_delta)) if args.save_delta else None
        outcome = None
        if args.prompt:
            base = replace(controller.defaults(), prompt=args.prompt, negative_prompt=args.negative, seed=args.seed,
                           **{k: v for k, v in (("steps", args.steps), ("cfg", args.cfg), ("sampler", sampler))
                              if v is not None})
            outcome = controller.compare_concept_edit(edited, base)
    except (InvalidRequest, PresetError, ValueError) as e:
        raise UsageError(f"{e} (model {args.model})") from None
    except (OutputsError, OSError) as e:
        print(f"error: could not save: {e}", file=ctx.stderr)
        return 1

    # 3. report
    written = [str(getattr(p, "path", p)) for p in outcome.saved] if outcome else []
    if args.json:
        print(json.dumps({"model": args.model, "weights_hash": model.weights_hash, "mode": "concept",
                          "edit": edited.settings(), "edited_weights_hash": edited.model.weights_hash,
                          "delta_path": saved_delta, "paths": written,
                          "seed": outcome.request.seed if outcome else None,
                          "timings": _rounded({"edit": edited.seconds, "total": time.perf_counter() - t_start})}),
              file=ctx.stdout)
    else:
        lines = [f"concept edit: {edited.describe()} ({edited.seconds:.2f} s)"]
        lines += [f"delta: {saved_delta}"] if saved_delta else []
        lines += written
        print("\n".join(lines), file=ctx.stdout)
    return 0


def _reweight(text: str) -> tuple[str, float]:
    word, _, factor = text.rpartition(":")
    try:
        value = float(factor)
    except ValueError:
        value = None
    if not word.strip() or value is None:
        raise UsageError(f"--reweight must look like word:factor (e.g. circle:2.5), got {text!r}")
    return word.strip(), value


if __name__ == "__main__":  # pragma: no cover
    from studio.cli import main

    sys.exit(main(["edit", *sys.argv[1:]]))
