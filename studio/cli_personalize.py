"""``python -m studio personalize``: learn a concept from a folder of images.

A thin caller of :class:`~studio.controllers.personalize.PersonalizationController`. Registered in
:data:`studio.cli.COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from studio.cli import PROG, Context, UsageError, _quiet_libraries, _rounded, parse_seeds, read_image_arg

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

EPILOG = f"""\
methods:
  textual-inversion  one new token embedding (Gal et al. 2022)
  prospect           ten embeddings, one per timestep stage (ProSpect); at generation choose the stages that take
                     the concept: generate --embedding FILE --concept-stages 1-4 --concept-word circle
  lora               DreamBooth-style LoRA (peft, --rank) on the UNet's attention projections, trained with the
                     token's embedding and prior preservation (renders of --init-word by the original model);
                     use it with: generate --lora FILE[:SCALE] (repeatable)

--images DIR holds 3 to 20 pictures of the concept (PNG, JPEG, WebP; centre-cropped and resized to the model's
size). On Tiny World the captions name each image's size, colour, place and background (read by the analyzer), so
the token learns the rest: the shape. --out FILE.safetensors is written in the diffusers format (or --format
a1111). Progress goes to stderr; with --checkpoint FILE an interrupted run resumes where it stopped.

examples:
  {PROG} personalize textual-inversion --images rings/ --token "<ring>" --init-word circle --steps 500 \\
      --out ring.safetensors
  {PROG} generate --prompt "a green <ring> at the top left" --embedding ring.safetensors --seed 3 --out g.png
"""


def add_personalize_parser(sub) -> None:
    p = sub.add_parser("personalize", help="learn a new concept (token) from a few images",
                       description="Teach the model a concept from 3 to 20 images.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=["textual-inversion", "prospect", "lora"])
    p.add_argument("--images", required=True, metavar="DIR", help="folder with 3 to 20 images of the concept")
    p.add_argument("--token", required=True, help="the placeholder, e.g. '<ring>'")
    p.add_argument("--init-word", default="object", help="a word the model knows to start from (default: object)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, help="learning rate (default: 1e-3)")
    p.add_argument("--vectors", type=int, default=1,
                   help="textual-inversion: vectors per token (the token stands for that many; default 1); each starts at "
                        "the next token of --init-word, in turn (\"hollow circle\" with 2: one word each)")
    p.add_argument("--rank", type=int, default=8, help="lora: rank (default 8)")
    p.add_argument("--resnets", action="store_true",
                   help="lora: also adapt the ResNet blocks' 3x3 convolutions (for shapes the model never drew)")
    p.add_argument("--augment", default="none", choices=["none", "mirror", "mirror+flip"],
                   help="also train on mirrored copies: left-right, or left-right and upside down (default none)")
    p.add_argument("--colour-keep", type=float, default=0.75,
                   help="Tiny World: how often a training caption names the image's colour (default 0.75, as the "
                        "model's own captions; 1 = always)")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", metavar="FILE", help="save progress here and resume from it")
    p.add_argument("--format", default="diffusers", choices=["diffusers", "a1111", "kohya"],
                   help="embeddings: diffusers or a1111; LoRA: diffusers or kohya (A1111 reads kohya files)")
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--device")
    p.add_argument("--out", required=True, metavar="FILE", help="the embedding file (.safetensors)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_personalize)


def cmd_personalize(args: argparse.Namespace, ctx: Context) -> int:
    t_start = time.perf_counter()
    with _quiet_libraries(enabled=True):
        from studio.engine import Cancelled, InvalidRequest
        from studio.models import ModelLoadError
        from studio.models import load_model as default_loader
        from studio.personalization.formats import EmbeddingFileError, save_concept
        from studio.personalization.lora import LoraFileError, LoraSpec, save_lora, train_lora
        from studio.personalization.training import TrainingSpec, train_concept

        # 1. validate what needs no model
        folder = Path(args.images)
        if not folder.is_dir():
            raise UsageError(f"--images {folder}: no such folder")
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not 3 <= len(files) <= 20:
            raise UsageError(f"--images {folder} holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); give 3 to 20")
        out = Path(args.out)
        if out.suffix != ".safetensors":
            raise UsageError(f"--out must be a .safetensors file, got {out}")
        lora = args.method == "lora"
        if args.vectors != 1 and args.method != "textual-inversion":
            raise UsageError(f"--vectors is for textual-inversion; {args.method} does not take it")
        if args.format not in (("diffusers", "kohya") if lora else ("diffusers", "a1111")):
            raise UsageError(f"--format {args.format} is not a {'LoRA' if lora else 'embedding'} format")
        images = [read_image_arg(str(f), "images").convert("RGB") for f in files]
        lr = 1e-3 if args.lr is None else args.lr
        spec = LoraSpec(args.token, args.init_word, args.rank, args.steps, lr, args.batch, args.seed,
                        resnets=args.resnets, augment=args.augment, colour_keep=args.colour_keep) if lora else \
            TrainingSpec(args.token, args.init_word, args.method, args.steps, lr, args.batch, args.seed,
                         preview_every=0, augment=args.augment, colour_keep=args.colour_keep, vectors=args.vectors)
        try:
            spec.check()
        except InvalidRequest as e:
            raise UsageError(str(e)) from None

        # 2. model, training (progress on stderr)
        try:
            model = (ctx.load_model or default_loader)(args.model, device=args.device)
        except ModelLoadError as e:
            raise UsageError(str(e)) from None

        def progress(step, total, loss):
            if not args.json and (step % max(1, total // 20) == 0 or step == total):
                print(f"step {step}/{total}  loss {loss:.4f}", file=ctx.stderr)

        try:
            if lora:
                result = train_lora(model, images, spec, on_progress=progress)
                save_lora(result.lora, out, args.format)
            else:
                result = train_concept(model, images, spec, on_progress=progress,
                                       checkpoint=Path(args.checkpoint) if args.checkpoint else None)
                save_concept(result.concept, out, args.format)
        except InvalidRequest as e:
            raise UsageError(f"{e} (model {args.model})") from None
        except Cancelled as e:  # pragma: no cover - the CLI has no cancel button; Ctrl-C ends the process
            print(f"error: {e}", file=ctx.stderr)
            return 1
        except (EmbeddingFileError, LoraFileError, OSError) as e:
            print(f"error: could not save the embedding: {e}", file=ctx.stderr)
            return 1

    summary = {"method": args.method, "token": spec.token, "path": str(out), "format": args.format,
               "steps": spec.steps, "resumed_from": getattr(result, "resumed_from", 0), "images": len(images),
               "losses": [round(x, 5) for x in result.losses], "model": args.model,
               "weights_hash": model.weights_hash,
               "timings": _rounded({"train": result.seconds, "total": time.perf_counter() - t_start})}
    if args.json:
        print(json.dumps(summary), file=ctx.stdout)
    else:
        print(f"{out}\n{spec.token}: {spec.steps} steps in {result.seconds:.1f} s", file=ctx.stdout)
    return 0


# ----------------------------------------------------------------------------- generate --embedding / --lora


def parse_stage_range(text: str) -> tuple[int, ...]:
    """``"1-4"`` or ``"1,3,5-6"`` -> stage numbers in 1..10."""
    try:
        stages = parse_seeds(text)
    except UsageError:
        stages = ()
    if not stages or any(not 1 <= k <= 10 for k in stages):
        raise UsageError(f"--concept-stages must be stages in 1..10 like 1-4 or 1,3,5-6, got {text!r}")
    return tuple(sorted(set(stages)))


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """``FILE`` or ``FILE:SCALE`` (scale in -4..4, default 1)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and not tail.startswith(("/", "\\")):
        try:
            path, scale = head, float(tail)
        except ValueError:
            path, scale = text, 1.0
    if not Path(path).is_file():
        raise UsageError(f"--lora {path}: no such file")
    if not -4.0 <= scale <= 4.0:
        raise UsageError(f"--lora scale must be in -4..4, got {scale}")
    return Path(path), scale


def concept_uses(cmd: GenerateCommand) -> list:
    if not cmd.embeddings:
        return []
    from studio.controllers.personalize import ConceptUse
    from studio.personalization.formats import EmbeddingFileError, load_concept

    uses = []
    for path in cmd.embeddings:
        try:
            uses.append(ConceptUse(load_concept(path), cmd.concept_stages, cmd.concept_word))
        except EmbeddingFileError as e:
            raise UsageError(f"--embedding {path}: {e}") from None
    return uses


def concept_hooks(model, request, uses: list, loras=()):
    """(hooks, controls) for a request with learned concepts: a per-stage concept named in the prompt gets its
    stage prompts; every image records the concepts."""
    from studio.engine import RunHooks

    hooks = RunHooks()
    if not uses and not loras:
        return hooks, None
    from studio.personalization.prospect import prospect_edit

    for u in uses:
        if u.concept.kind == "prospect" and u.concept.token in request.prompt:
            hooks.embedding_edits.append(prospect_edit(model, request.sampler, request.steps, request.prompt,
                                                       u.concept, u.stages, u.replacement))
    return hooks, {"personalization": {"concepts": [u.settings() for u in uses],
                                       "loras": [{"file": Path(p).name, "scale": s} for p, s in loras]}}


if __name__ == "__main__":  # pragma: no cover
    from studio.cli import main

    sys.exit(main(["personalize", *sys.argv[1:]]))
