"""Command line: ``python -m studio <command> ...`` (also installed as ``studio``).

Commands are argparse subparsers, one ``cmd_<name>(args, ctx)`` function each;
add a command by writing its ``add_<name>_parser`` and ``cmd_<name>`` and
listing them in :data:`COMMANDS`. Every command is a thin caller of a
controller in :mod:`studio.controllers`.

Exit codes: 0 success; 1 a failure while working (e.g. the disk is full);
2 bad input (the arguments, the model or the request), reported as one line
``error: <what was wrong; what is allowed>`` on stderr; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

PROG = "python -m studio"
MAX_SEED = 2**32 - 1
MAX_IMAGES = 10_000
NAME_PATTERN = "{prompt_index:03d}-{seed}.png"

GENERATE_EPILOG = f"""\
output files:
  --out FILE     exactly one image (one prompt, one seed, --batch 1) is written to FILE (.png).
  --out-dir DIR  every image is written to DIR/{NAME_PATTERN}, e.g. DIR/000-42.png:
                 prompt_index is the prompt's position (0 for --prompt; for --prompts-file the
                 index among the prompts kept after skipping blank and '#' lines) and seed is
                 the image's own seed (a batch of N from seed S uses seeds S..S+N-1).
                 Existing files with the same name are replaced.
  Files are written atomically (temp file + rename) and carry the studio metadata: the
  A1111 'parameters' text and the 'studio' JSON chunk (settings + provenance), so
  "load settings from image" works on them. With --history DB each file is also
  recorded in that history database (off by default).

seeds:
  --seed S       one seed; -1 (the default) draws a random one.
  --seeds A-B    every seed from A to B inclusive; a comma list like 1,5,10-12 also works.
  The model is loaded once for all prompts and seeds.

--json prints one JSON object: {{"images": [{{"path", "prompt_index", "prompt", "seed",
"timings"}}...], "paths", "seeds", "timings": {{"load", "generate", "total"}}, "warnings", ...}};
an image's timings are those of the run (batch) that made it.

examples:
  {PROG} generate --prompt "a red house by a lake" --out house.png
  {PROG} generate --prompts-file prompts.txt --seeds 1-4 --steps 20 --out-dir out --json
"""


class UsageError(Exception):
    """Bad input: printed as one ``error:`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise UsageError(f"{message} (see '{self.prog} --help')")


@dataclass(frozen=True)
class Context:
    """What a command needs from its caller (injectable for tests)."""

    stdout: TextIO
    stderr: TextIO
    load_model: Callable | None = None  # default: studio.models.load_model


# ----------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class GenerateCommand:
    """A validated ``generate`` invocation (everything that can be checked before
    loading the model). ``None`` settings mean "the model's default"."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]  # -1 = random
    negative: str | None
    steps: int | None
    cfg: float | None
    sampler: str | None
    width: int | None
    height: int | None
    batch: int
    model: str
    device: str | None
    dtype: str | None
    allow_pickle: bool
    out: Path | None
    out_dir: Path | None
    history: Path | None
    as_json: bool
    verbose: bool
    regions: tuple = ()  # studio.composition.Region, from --regions FILE
    feather: float = 0.05
    region_mode: str = "add"
    stages: tuple = ()  # studio.composition.StagePrompt, from --stages FILE
    embeddings: tuple[Path, ...] = ()  # learned concepts (diffusers or A1111 .safetensors)
    loras: tuple[tuple[Path, float], ...] = ()
    concept_stages: tuple[int, ...] = tuple(range(1, 11))  # for a per-stage (ProSpect) concept
    concept_word: str = ""

    @property
    def image_count(self) -> int:
        return len(self.prompts) * len(self.seeds) * self.batch

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerateCommand:
        from studio.cli_personalize import parse_lora_arg, parse_stage_range
        # 1. composition files (their "prompt" is the default prompt), then prompts: exactly one source
        regions, feather, region_mode, stages, file_prompt = read_composition_files(args.regions, args.stages)
        if args.prompt is not None and args.prompts_file is not None:
            raise UsageError("--prompt and --prompts-file are mutually exclusive; give one prompt or one file")
        if args.prompt is None and args.prompts_file is None and file_prompt is None:
            raise UsageError("a prompt is required: --prompt TEXT or --prompts-file FILE (one prompt per line)")
        prompts = (args.prompt,) if args.prompt is not None else read_prompts_file(args.prompts_file) \
            if args.prompts_file is not None else (file_prompt,)
        # 2. seeds
        if args.seed is not None and args.seeds is not None:
            raise UsageError("--seed and --seeds are mutually exclusive; give one seed (--seed 5) "
                             "or a range (--seeds 1-3)")
        if args.seeds is not None:
            seeds = parse_seeds(args.seeds)
        else:
            seed = -1 if args.seed is None else args.seed
            if not (seed == -1 or 0 <= seed <= MAX_SEED):
                raise UsageError(f"--seed must be -1 (random) or in 0..{MAX_SEED}, got {seed}")
            seeds = (seed,)
        # 3. numbers that don't depend on the model
        sampler = check_sampler(args.sampler) if args.sampler is not None else None
        from studio.engine.validate import MAX_BATCH, MAX_CFG, MAX_STEPS

        if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
            raise UsageError(f"--steps must be in 1..{MAX_STEPS}, got {args.steps}")
        if args.cfg is not None and not (math.isfinite(args.cfg) and 0 <= args.cfg <= MAX_CFG):
            raise UsageError(f"--cfg must be a finite number in 0..{MAX_CFG:g}, got {args.cfg}")
        for name in ("width", "height"):
            value = getattr(args, name)
            if value is not None and (value <= 0 or value % 8):
                raise UsageError(f"--{name} must be a positive multiple of 8 (e.g. 64, 512), got {value}")
        if not 1 <= args.batch <= MAX_BATCH:
            raise UsageError(f"--batch must be in 1..{MAX_BATCH}, got {args.batch}")
        # 4. where the images go
        if (args.out is None) == (args.out_dir is None):
            raise UsageError("give exactly one of --out FILE (one image) or --out-dir DIR (any number of images)")
        cmd = cls(prompts=prompts, seeds=seeds, negative=args.negative, steps=args.steps, cfg=args.cfg,
                  sampler=sampler, width=args.width, height=args.height, batch=args.batch, model=args.model,
                  device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                  out=Path(args.out) if args.out is not None else None,
                  out_dir=Path(args.out_dir) if args.out_dir is not None else None,
                  history=Path(args.history) if args.history is not None else None,
                  as_json=args.json, verbose=args.verbose, regions=regions, feather=feather, stages=stages,
                  region_mode=region_mode, embeddings=tuple(Path(e) for e in args.embedding),
                  concept_stages=parse_stage_range(args.concept_stages), concept_word=args.concept_word or "",
                  loras=tuple(parse_lora_arg(a) for a in args.lora))
        for path in cmd.embeddings:
            if not path.is_file():
                raise UsageError(f"--embedding {path}: no such file")
        if cmd.out is not None:
            if cmd.image_count != 1:
                raise UsageError(f"--out FILE takes exactly one image but this makes {cmd.image_count} "
                                 f"({len(prompts)} prompt(s) x {len(seeds)} seed(s) x batch {cmd.batch}); "
                                 "use --out-dir DIR instead")
            if cmd.out.suffix.lower() != ".png":
                raise UsageError(f"--out must name a .png file (images are saved as PNG with metadata), "
                                 f"got {cmd.out}")
            if cmd.out.is_dir():
                raise UsageError(f"--out {cmd.out} is a folder; use --out-dir for folders")
        if cmd.out_dir is not None and cmd.out_dir.exists() and not cmd.out_dir.is_dir():
            raise UsageError(f"--out-dir {cmd.out_dir} exists and is not a folder")
        if cmd.image_count > MAX_IMAGES:
            raise UsageError(f"this would make {cmd.image_count} images; at most {MAX_IMAGES} per command")
        return cmd


def read_composition_files(regions_path: str | None, stages_path: str | None):
    """``(regions, feather, region_mode, stages, prompt)`` from ``--regions`` / ``--stages`` files (schemas in the
    README)."""
    if regions_path is None and stages_path is None:
        return (), 0.05, "add", (), None
    from studio.composition import load_regions, load_stages
    from studio.engine import InvalidRequest

    regions, feather, mode, stages, prompt = (), 0.05, "add", (), None
    try:
        if regions_path is not None:
            regions, feather, prompt, mode = load_regions(regions_path)
        if stages_path is not None:
            stages, stage_prompt = load_stages(stages_path)
            prompt = prompt if prompt is not None else stage_prompt
    except InvalidRequest as e:
        raise UsageError(str(e)) from None
    return regions, feather, mode, stages, prompt


def read_prompts_file(path: str) -> tuple[str, ...]:
    """Prompts of a file, one per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"prompts file not found: {path} (one prompt per line)") from None
    except IsADirectoryError:
        raise UsageError(f"--prompts-file {path} is a folder; pass a text file, one prompt per line") from None
    except UnicodeDecodeError:
        raise UsageError(f"prompts file {path} is not UTF-8 text (one prompt per line)") from None
    except OSError as e:
        raise UsageError(f"cannot read prompts file {path}: {e.strerror or e}") from None
    prompts = tuple(line.strip() for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise UsageError(f"prompts file {path} has no prompts (blank lines and lines starting with # are skipped)")
    return prompts


_SEED_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1-3"`` -> (1, 2, 3); ``"1,5,10-12"`` -> (1, 5, 10, 11, 12). Duplicates are refused."""
    seeds: list[int] = []
    for part in text.split(","):
        m = _SEED_PART.match(part)
        if not m:
            raise UsageError(f"--seeds must look like A-B (inclusive range) or a comma list like 1,5,10-12 "
                             f"of seeds in 0..{MAX_SEED}, got {text!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo or hi > MAX_SEED:
            raise UsageError(f"--seeds range {part.strip()!r} must go up (A <= B) and stay in 0..{MAX_SEED}")
        if hi - lo + 1 + len(seeds) > MAX_IMAGES:
            raise UsageError(f"--seeds {text!r} lists more than {MAX_IMAGES} seeds")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r} lists a seed twice; each seed names one output file")
    return tuple(seeds)


def read_image_arg(path: str, flag: str):
    """The image file given to ``--flag`` (loaded, file closed), or a :class:`UsageError` saying what is wrong."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise UsageError(f"--{flag} {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"--{flag} {path}: not a readable image ({e}); use PNG, JPEG or WebP") from None


def check_sampler(name: str) -> str:
    """The engine's spelling of ``name`` (A1111 aliases like ``euler_a`` accepted)."""
    from studio.engine import SAMPLERS
    from studio.outputs import normalize_sampler

    canonical = normalize_sampler(name)
    by_key = {s.lower(): s for s in SAMPLERS}
    found = by_key.get(canonical.lower()) or by_key.get(name.strip().lower())
    if found is None:
        raise UsageError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    return found


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate images from a prompt (or a file of prompts)",
                       description="Generate images with the studio's engine and save them with full metadata.",
                       epilog=GENERATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to generate")
    what.add_argument("--prompt", help="the prompt")
    what.add_argument("--prompts-file", metavar="FILE",
                      help="text file, one prompt per line (blank lines and lines starting with # are skipped)")
    what.add_argument("--regions", metavar="FILE.json",
                      help='regional prompts: {"prompt": optional global prompt, "feather": 0.05, "mode": "add" | '
                           '"average", "regions": [{"prompt": "...", "box": [x0, y0, x1, y1], "weight": 1}]} (box in '
                           'fractions, origin top left)')
    what.add_argument("--stages", metavar="FILE.json",
                      help='per-stage prompts: {"prompt": optional, "stages": [{"from": 1, "to": 3, "prompt": '
                           '"..."}]} (10 stages in sampling order: 1 = first, noisiest steps)')
    what.add_argument("--negative", metavar="TEXT", help="negative prompt (default: the model's, usually empty)")
    what.add_argument("--seed", type=int, metavar="S", help="seed; -1 = random (default)")
    what.add_argument("--seeds", metavar="A-B", help="inclusive seed range A-B, or a list like 1,5,10-12")
    settings = p.add_argument_group("settings (defaults: the model's studio_defaults.json, else usual SD ones)")
    settings.add_argument("--steps", type=int, help="denoising steps")
    settings.add_argument("--cfg", type=float, help="classifier-free guidance scale")
    settings.add_argument("--sampler", help="sampler, e.g. 'DPM++ 2M', 'Euler a', 'DDIM', 'UniPC'")
    settings.add_argument("--width", type=int, help="image width in pixels (a multiple of 8)")
    settings.add_argument("--height", type=int, help="image height in pixels (a multiple of 8)")
    settings.add_argument("--batch", type=int, default=1, metavar="N",
                          help="images per seed: seeds S..S+N-1 in one run (default 1)")
    model = p.add_argument_group("model")
    model.add_argument("--model", default="tinyworld",
                       help="'tinyworld' (default), a diffusers folder, a .safetensors file or a Hub id")
    model.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    model.add_argument("--dtype", help="fp16, bf16 or fp32 (default: fp16 on cuda, else fp32)")
    model.add_argument("--allow-pickle", action="store_true",
                       help="allow .ckpt/.pt/.bin checkpoints (unpickling can run arbitrary code)")
    learned = p.add_argument_group("learned concepts (python -m studio personalize)")
    learned.add_argument("--embedding", action="append", default=[], metavar="FILE",
                         help="a textual-inversion or per-stage embedding (.safetensors, diffusers or A1111); "
                              "use its token in the prompt; repeatable")
    learned.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                         help="a LoRA (.safetensors: diffusers, kohya or A1111) merged at SCALE (default 1); "
                              "repeatable")
    learned.add_argument("--concept-stages", default="1-10", metavar="A-B",
                         help="per-stage concepts: the stages (1 = noisiest .. 10) that take the concept "
                              "(default 1-10)")
    learned.add_argument("--concept-word", metavar="WORD",
                         help="per-stage concepts: the word in the other stages (default: its initializer word)")
    out = p.add_argument_group("output (one of --out / --out-dir is required)")
    out.add_argument("--out", metavar="FILE", help="write the one image to FILE (.png)")
    out.add_argument("--out-dir", metavar="DIR", help=f"write images to DIR/{NAME_PATTERN}")
    out.add_argument("--history", metavar="DB", help="also record the images in this history database")
    out.add_argument("--json", action="store_true", help="print one JSON object describing the results")
    out.add_argument("--verbose", action="store_true", help="show library log messages and progress bars")
    p.set_defaults(handler=cmd_generate)


def cmd_generate(args: argparse.Namespace, ctx: Context) -> int:
    """``generate``: load the model once, validate every request, then run them."""
    t_start = time.perf_counter()
    cmd = GenerateCommand.from_args(args)
    with _quiet_libraries(enabled=not cmd.verbose):
        from studio.controllers import FileSaver, GenerateController
        from studio.engine import InvalidRequest
        from studio.models import ModelLoadError
        from studio.models import load_model as default_loader
        from studio.outputs import History, OutputsError

        # 1. the model, once
        loader = ctx.load_model or default_loader
        t0 = time.perf_counter()
        try:
            model = loader(cmd.model, device=cmd.device, dtype=cmd.dtype, allow_pickle=cmd.allow_pickle)
        except ModelLoadError as e:
            raise UsageError(str(e)) from None
        if cmd.loras:
            from studio.personalization.lora import LoraFileError, apply_loras, load_lora

            try:
                model = apply_loras(model, [(load_lora(path, model), scale) for path, scale in cmd.loras])
            except (LoraFileError, InvalidRequest) as e:
                raise UsageError(f"--lora: {e}") from None
        from studio.cli_personalize import concept_hooks, concept_uses

        uses = concept_uses(cmd)
        if uses:
            from studio.personalization.tokens import personalized_copy

            try:
                model = personalized_copy(model, [u.concept for u in uses])
            except InvalidRequest as e:
                raise UsageError(f"--embedding: {e}") from None
            if cmd.stages and any(u.concept.kind == "prospect" for u in uses):
                raise UsageError("a per-stage concept picks its own stages (--concept-stages); drop --stages")
        t_load = time.perf_counter() - t0
        controller = GenerateController(model, None)

        # 2. every request, validated before anything runs
        base = controller.defaults()
        overrides = {k: v for k, v in dict(negative_prompt=cmd.negative, steps=cmd.steps, cfg=cmd.cfg,
                                            sampler=cmd.sampler, width=cmd.width, height=cmd.height).items()
                     if v is not None}
        base = replace(base, batch_size=cmd.batch, **overrides)
        jobs = [(i, replace(base, prompt=prompt, seed=controller.prepare(replace(base, seed=seed)).seed))
                for i, prompt in enumerate(cmd.prompts) for seed in cmd.seeds]
        from studio.controllers.compose import CompositionController, CompositionRequest

        composer = CompositionController(model, generator=controller)
        try:
            for _, request in jobs:
                controller.validate(request)
                if cmd.regions or cmd.stages:
                    composer.prepare(CompositionRequest(request, regions=cmd.regions, feather=cmd.feather,
                                                        region_mode=cmd.region_mode, stages=cmd.stages))
        except InvalidRequest as e:
            raise UsageError(f"{e} (model {cmd.model})") from None
        _check_unique_names(jobs)

        # 3. run and save
        history = None
        try:
            if cmd.history is not None:
                history = History(cmd.history, files_root=cmd.out_dir or cmd.out.parent)
            if cmd.out_dir is not None:
                cmd.out_dir.mkdir(parents=True, exist_ok=True)
            images, warned = [], []
            t0 = time.perf_counter()
            for index, request in jobs:
                target = cmd.out if cmd.out is not None else None

                def path_for(settings, index=index, target=target):
                    return target or cmd.out_dir / NAME_PATTERN.format(prompt_index=index, seed=settings.seed)

                saver = FileSaver(path_for, history=history)
                if cmd.regions or cmd.stages:
                    outcome = composer.with_store(saver).compose(
                        CompositionRequest(request, regions=cmd.regions, feather=cmd.feather,
                                           region_mode=cmd.region_mode, stages=cmd.stages),
                        save=True)
                    paths = [getattr(s, "path", s) for s in outcome.saved]
                    seeds = [request.seed + i for i in range(request.batch_size)]
                else:
                    hooks, controls = concept_hooks(model, request, uses, cmd.loras)
                    outcome = controller.with_store(saver).run(request, hooks=hooks, controls=controls)
                    paths, seeds = outcome.paths, outcome.seeds
                for w in outcome.warnings:
                    if w not in warned:
                        warned.append(w)
                        if not cmd.as_json:
                            print(f"warning: {w}", file=ctx.stderr)
                for seed, path in zip(seeds, paths):
                    images.append({"path": str(path), "prompt_index": index, "prompt": request.prompt,
                                   "seed": seed, "timings": _rounded(outcome.timings)})
                    if not cmd.as_json:
                        print(path, file=ctx.stdout, flush=True)
            t_generate = time.perf_counter() - t0
        except (OutputsError, OSError) as e:
            print(f"error: could not save the images: {e}", file=ctx.stderr)
            return 1
        finally:
            if history is not None:
                history.close()

    if cmd.as_json:
        report = {
            "model": cmd.model, "weights_hash": model.weights_hash, "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "settings": {k: getattr(base, k) for k in ("negative_prompt", "sampler", "steps", "cfg", "width",
                                                          "height", "batch_size")},
            "images": images, "paths": [im["path"] for im in images], "seeds": [im["seed"] for im in images],
            "timings": _rounded({"load": t_load, "generate": t_generate, "total": time.perf_counter() - t_start}),
            "warnings": warned,
        }
        print(json.dumps(report), file=ctx.stdout)
    return 0


def _check_unique_names(jobs) -> None:
    """Batches from nearby seeds overlap (seed 1 batch 2 = seeds 1, 2): refuse
    before running rather than overwrite a file made moments earlier."""
    seen: set[tuple[int, int]] = set()
    for index, request in jobs:
        for k in range(request.batch_size):
            key = (index, (request.seed + k) % 2**32)
            if key in seen:
                raise UsageError(f"prompt {index} would make seed {key[1]} twice (--batch {request.batch_size} "
                                 "overlaps the next seed); space the seeds by the batch size or use --batch 1")
            seen.add(key)


def _rounded(timings) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in timings.items()}


@contextlib.contextmanager
def _quiet_libraries(enabled: bool) -> Iterator[None]:
    """Silence diffusers/transformers log lines, progress bars and Python warnings
    (stderr carries only our own lines); the previous settings are restored."""
    if not enabled:
        yield
        return
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = (tlog.get_verbosity(), dlog.get_verbosity())
    bars = (tlog.is_progress_bar_enabled(), dlog.is_progress_bar_enabled())
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tlog.set_verbosity(levels[0])
        dlog.set_verbosity(levels[1])
        if bars[0]:
            tlog.enable_progress_bar()
        if bars[1]:
            dlog.enable_progress_bar()


# ----------------------------------------------------------------------------- entry point

#: name -> function adding the subparser (which sets ``handler``)
COMMANDS: dict[str, Callable] = {"generate": add_generate_parser}


def _register_workbench_commands() -> None:
    from studio.cli_attributes import add_attributes_parser  # imports this module: register after it is built

    from studio.cli_edit import add_edit_parser
    from studio.cli_inspect import add_inspect_parser
    from studio.cli_personalize import add_personalize_parser

    COMMANDS["attributes"] = add_attributes_parser
    COMMANDS["edit"] = add_edit_parser
    COMMANDS["inspect"] = add_inspect_parser
    COMMANDS["personalize"] = add_personalize_parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Controllable-diffusion studio from the command line. "
                                            "Run '%(prog)s COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_workbench_commands()
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None, *, load_model: Callable | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code (``load_model`` is injectable for tests)."""
    ctx = Context(stdout=stdout or sys.stdout, stderr=stderr or sys.stderr, load_model=load_model)
    parser = build_parser()
    try:
        args = parser.parse_args(_attach_negative_lists(sys.argv[1:] if argv is None else list(argv)))
        if getattr(args, "handler", None) is None:
            parser.print_help(ctx.stdout)
            return 0
        return args.handler(args, ctx)
    except UsageError as e:
        print(f"error: {_one_line(str(e))}", file=ctx.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print("error: interrupted; files already written are complete, nothing partial was left",
              file=ctx.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a CLI reports, it doesn't dump
        if os.environ.get("STUDIO_DEBUG"):
            traceback.print_exc(file=ctx.stderr)
        print(f"error: unexpected {type(e).__name__}: {_one_line(str(e))} "
              "(set STUDIO_DEBUG=1 for a traceback)", file=ctx.stderr)
        return 1


_NUMBER_LIST = re.compile(r"^-\d*\.?\d+(e[-+]?\d+)?(,\s*-?\d*\.?\d+(e[-+]?\d+)?)*,?$", re.IGNORECASE)


def _attach_negative_lists(argv: list[str]) -> list[str]:
    """``--values -2,-1,0`` as ``--values=-2,-1,0``: argparse takes a value that starts with "-" for an option
    unless it is one plain number, so a comma-separated list beginning with a negative number needs attaching."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NUMBER_LIST.match(arg) and "," in arg:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
