"""Tiny World quality: does the model draw what the prompt says? Measured with the analyzer.

Prompts come from fixed generator seeds, so every run asks for the same scenes:
  single   fully specified one-object prompts ("a large red circle at the top left on a black background")
  pair     fully specified two-object prompts: are both objects there with the right colour-shape binding? (also
           read with the analyzer separating touching objects of clearly different colours: the "_split" keys)
  omitted  prompts that leave one attribute out: the distribution of that attribute (it should vary)
  sizes    one-object prompts said with every size word the model's tokenizer knows as one token (five up to stage
           6, nine since stage 7's finer caption sizes), same seed and scene otherwise: the median measured radius
           per word, how often the radius is nearest that word's own, and per seed whether the radii grow word by
           word and the largest step between neighbouring words as a share of the seed's tiny-to-huge range
  count    one-object prompts said five ways, from the full caption to "a red circle": how often the image shows
           exactly one object (a prompt without its background clause may, by Tiny World's partial captions, get
           more; with it, it asks for exactly the objects it names), and how often the named object is among them

Images come from plain diffusers StableDiffusionPipeline (the model's own default sampler, DPM-Solver++), so the
figures describe the model, not our engine.

    python bench/tinyworld_quality.py [--model assets/tinyworld] [--n-single 240] [--cfg 5] [--parts pair,sizes]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.tinyworld.analyzer import analyze  # noqa: E402
from studio.tinyworld.captions import full_caption, object_phrase  # noqa: E402
from studio.tinyworld.scenes import SceneSpec, generate_scene  # noqa: E402
from studio.tinyworld.vocab import CAPTION_SIZES, SIZES, known_size_words  # noqa: E402

SIZE_ORDER = list(SIZES)


def load_pipe(model: str, device: str):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe, prompts: list[str], seeds: list[int], cfg: float, steps: int, batch: int):
    images = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + batch]]
        out = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=cfg, generator=gens,
                   height=64, width=64)
        images += out.images
    return images


def fully_specified(pipe, base_seed: int, n: int, n_objects: int, cfg: float, steps: int, batch: int):
    """Scenes from fixed generator seeds, their fully specified captions, and what the model drew for them."""
    scenes = [generate_scene(base_seed + i, SceneSpec(n_objects=n_objects)) for i in range(n)]
    prompts = [full_caption(s.background, s.objects) for s in scenes]
    return scenes, prompts, render(pipe, prompts, [base_seed + i for i in range(n)], cfg, steps, batch)


def eval_single(pipe, n: int, cfg: float, steps: int, batch: int) -> dict:
    scenes, prompts, images = fully_specified(pipe, 10_000, n, 1, cfg, steps, batch)
    c = Counter()
    for scene, image in zip(scenes, images):
        truth, seen = scene.objects[0], analyze(image)
        c["background"] += seen.background == scene.background
        c["one_object"] += len(seen.objects) == 1
        if not seen.objects:
            continue
        obj = seen.objects[0]  # the largest
        c["colour"] += obj.colour == truth.colour
        c["shape"] += obj.shape == truth.shape
        c["size_within_one"] += abs(SIZE_ORDER.index(obj.size) - SIZE_ORDER.index(truth.size)) <= 1
        c["size_exact"] += obj.size == truth.size
        c["position"] += (obj.column, obj.row) == (truth.column, truth.row)
    keys = ["colour", "shape", "size_within_one", "size_exact", "position", "one_object", "background"]
    return {k: c[k] / n for k in keys}, images[:16], prompts[:16]


def eval_pairs(pipe, n: int, cfg: float, steps: int, batch: int) -> dict:
    scenes, _, images = fully_specified(pipe, 20_000, n, 2, cfg, steps, batch)
    c = Counter()
    for scene, image in zip(scenes, images):
        want = {(o.colour, o.shape) for o in scene.objects}
        # "_split": the analyzer also separating touching objects of clearly different colours
        for suffix, split in (("", False), ("_split", True)):
            seen = analyze(image, split_touching=split)
            both = want <= {(o.colour, o.shape) for o in seen.objects}
            c["binding" + suffix] += both
            c["binding_exact_count" + suffix] += both and len(seen.objects) == 2
            c["two_objects" + suffix] += len(seen.objects) == 2
    return {k + suffix: c[k + suffix] / n for suffix in ("", "_split")
            for k in ["binding", "binding_exact_count", "two_objects"]}


def eval_omitted(pipe, n: int, cfg: float, steps: int, batch: int) -> dict:
    """Leave out one attribute; report what the model chose for it."""
    seeds = [30_000 + i for i in range(n)]
    base = [generate_scene(s, SceneSpec(n_objects=1)) for s in seeds]
    cases = {
        "colour": [f"{object_phrase(s.objects[0], size=True, colour=False, position=True)} on a {s.background} background" for s in base],
        "size": [f"{object_phrase(s.objects[0], size=False, colour=True, position=True)} on a {s.background} background" for s in base],
        "position": [f"{object_phrase(s.objects[0], size=True, colour=True, position=False)} on a {s.background} background" for s in base],
        "background": [object_phrase(s.objects[0], size=True, colour=True, position=True) for s in base],
    }
    report = {}
    for attribute, prompts in cases.items():
        images = render(pipe, prompts, seeds, cfg, steps, batch)
        dist = Counter()
        for image in images:
            seen = analyze(image)
            if attribute == "background":
                dist[seen.background] += 1
            elif seen.objects:
                o = seen.objects[0]
                dist[{"colour": o.colour, "size": o.size, "position": o.position}[attribute]] += 1
            else:
                dist["(no object)"] += 1
        report[attribute] = dict(dist.most_common())
    return report


def eval_size_words(pipe, n: int, cfg: float, steps: int, batch: int) -> dict:
    """Every size word the model knows, at the same seed and scene: does the radius follow the word?"""
    import dataclasses
    import statistics

    words = known_size_words(pipe.tokenizer)
    seeds = [40_000 + i for i in range(n)]
    scenes = [generate_scene(s, SceneSpec(n_objects=1)) for s in seeds]
    radii = {}  # word -> per-seed radius (None: not exactly one object of the prompted shape)
    for w in words:
        prompts = [full_caption(s.background, [dataclasses.replace(s.objects[0], size=w)]) for s in scenes]
        found = []
        for scene, image in zip(scenes, render(pipe, prompts, seeds, cfg, steps, batch)):
            objs = analyze(image).objects
            found.append(objs[0].radius if len(objs) == 1 and objs[0].shape == scene.objects[0].shape else None)
        radii[w] = found
    known = {w: CAPTION_SIZES[w] for w in words}
    per_word = {}
    for w in words:
        rs = [r for r in radii[w] if r is not None]
        nearest = [min(known, key=lambda k: abs(known[k] - r)) == w for r in rs]
        per_word[w] = {"nominal": CAPTION_SIZES[w], "median_radius": statistics.median(rs) if rs else None,
                       "nearest_is_word": sum(nearest) / len(rs) if rs else None, "n": len(rs)}
    monotone, largest_step = [], []
    for i in range(n):
        seq = [radii[w][i] for w in words]
        if any(r is None for r in seq):
            continue
        steps_ = [b - a for a, b in zip(seq, seq[1:])]
        monotone.append(all(d > 0 for d in steps_))
        span = seq[-1] - seq[0]
        largest_step.append(max(abs(d) for d in steps_) / span if span > 0 else 1.0)
    return {"words": words, "per_word": per_word, "seeds_all_found": len(monotone),
            "seeds_growing_word_by_word": sum(monotone) / len(monotone) if monotone else None,
            "largest_step_share_median": statistics.median(largest_step) if largest_step else None,
            "seeds_largest_step_le_35pct": sum(x <= 0.35 for x in largest_step) / len(largest_step)
            if largest_step else None, "radii": radii}


COUNT_PHRASINGS = {  # name -> (size, position, background) said
    "full": (True, True, True),
    "no_position": (True, False, True),
    "colour_shape_background": (False, False, True),
    "no_position_no_background": (True, False, False),
    "colour_shape": (False, False, False),
}


def eval_count(pipe, n: int, cfg: float, steps: int, batch: int) -> dict:
    """One-object prompts said several ways (COUNT_PHRASINGS): how often exactly one object is drawn."""
    seeds = [50_000 + i for i in range(n)]
    scenes = [generate_scene(s, SceneSpec(n_objects=1)) for s in seeds]
    report = {}
    for name, (size, position, background) in COUNT_PHRASINGS.items():
        prompts = [object_phrase(s.objects[0], size=size, colour=True, position=position)
                   + (f" on a {s.background} background" if background else "") for s in scenes]
        one = named = 0
        for scene, image in zip(scenes, render(pipe, prompts, seeds, cfg, steps, batch)):
            objs = analyze(image).objects
            one += len(objs) == 1
            named += any((o.colour, o.shape) == (scene.objects[0].colour, scene.objects[0].shape) for o in objs)
        report[name] = {"example": prompts[0], "exactly_one_object": one / n, "named_object_drawn": named / n}
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tinyworld"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-single", type=int, default=240)
    p.add_argument("--n-pair", type=int, default=120)
    p.add_argument("--n-omitted", type=int, default=60)
    p.add_argument("--n-sizes", type=int, default=48, help="seeds of the sizes part (x each size word)")
    p.add_argument("--n-count", type=int, default=96, help="scenes of the count part (x each phrasing)")
    p.add_argument("--cfg", type=float, nargs="+", default=None, help="default: the model's studio_defaults.json")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "tinyworld_quality.json"))
    p.add_argument("--parts", default="single,pair,omitted", help="which evaluations to run (comma-separated)")
    p.add_argument("--grid", default=None, help="save a grid of the first single-object samples here")
    args = p.parse_args()

    defaults_file = Path(args.model) / "studio_defaults.json"
    default_cfg = json.loads(defaults_file.read_text())["cfg"] if defaults_file.exists() else 7.5
    pipe = load_pipe(args.model, args.device)
    runs = []
    for cfg in args.cfg or [default_cfg]:
        t0 = time.time()
        parts = args.parts.split(",")
        single, grid_images, grid_prompts = eval_single(pipe, args.n_single, cfg, args.steps, args.batch) \
            if "single" in parts else ({}, [], [])
        pairs = eval_pairs(pipe, args.n_pair, cfg, args.steps, args.batch) if "pair" in parts else {}
        omitted = eval_omitted(pipe, args.n_omitted, cfg, args.steps, args.batch) if "omitted" in parts else {}
        sizes = eval_size_words(pipe, args.n_sizes, cfg, args.steps, args.batch) if "sizes" in parts else {}
        count = eval_count(pipe, args.n_count, cfg, args.steps, args.batch) if "count" in parts else {}
        runs.append({"cfg": cfg, "single": single, "pair": pairs, "omitted": omitted, "sizes": sizes,
                     "count": count, "seconds": time.time() - t0})
        print(f"\ncfg {cfg}  ({time.time() - t0:.0f}s)")
        print(f"{'single-object metric':<22}{'rate':>8}")
        for k, v in single.items():
            print(f"{k:<22}{v:>8.1%}")
        for k, v in pairs.items():
            print(f"{'pair ' + k:<22}{v:>8.1%}")
        for k, v in omitted.items():
            print(f"omitted {k}: {v}")
        if sizes:
            print(f"{'size word':<12}{'nominal':>8}{'median r':>10}{'nearest':>9}{'n':>5}")
            for w, row in sizes["per_word"].items():
                med = f"{row['median_radius']:.1f}" if row["median_radius"] is not None else "-"
                near = f"{row['nearest_is_word']:.0%}" if row["nearest_is_word"] is not None else "-"
                print(f"{w:<12}{row['nominal']:>8.1f}{med:>10}{near:>9}{row['n']:>5}")
            print(f"seeds with every word found: {sizes['seeds_all_found']}; radius grows word by word: "
                  f"{sizes['seeds_growing_word_by_word']:.0%}; largest step between neighbouring words, median "
                  f"share of the range: {sizes['largest_step_share_median']:.0%}; seeds whose largest step <= 35%: "
                  f"{sizes['seeds_largest_step_le_35pct']:.0%}")
        for name, row in count.items():
            print(f"count {name:<28} exactly one object {row['exactly_one_object']:>6.1%}   named object drawn "
                  f"{row['named_object_drawn']:>6.1%}   e.g. {row['example']!r}")
        if args.grid and grid_images:
            from PIL import Image

            grid = Image.new("RGB", (64 * 8, 64 * 2))
            for i, im in enumerate(grid_images):
                grid.paste(im, ((i % 8) * 64, (i // 8) * 64))
            grid.save(Path(args.grid).with_suffix(f".cfg{cfg}.png"))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "device": args.device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
        "command": "python " + " ".join(sys.argv),
        "model": args.model, "steps": args.steps, "sampler": "DPM++ 2M (DPMSolverMultistepScheduler)",
        "n_single": args.n_single, "n_pair": args.n_pair, "n_omitted": args.n_omitted, "n_sizes": args.n_sizes, "n_count": args.n_count, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
