"""Composition on Tiny World, measured with the analyzer (every image from the studio's CompositionController).

Quality (seeds are fixed; every prompt group is one batched run):
  pair     two-object prompts, different colours and shapes ("a red circle" + "a blue square"), n_pairs x per_pair
           seeds: (a) the monolithic prompt "A and B"; (b) AND composition "A AND B"; (c) regions: A in the left
           half, B in the right half (global prompt empty), the regions added (default mode) and averaged
           (MultiDiffusion), and added at each --region-weights weight; AND again at each --and-weights weight
           (both parts). "bound": both objects present with their
           colour and shape; "bound, exactly 2": and nothing else; "placed": each object in its own half (per
           object), "both placed": both in one image
  pair_positioned  the same pairs with each object's side named ("a red circle on the left" + "a blue square on
           the right"): monolithic and AND
  not      "a circle AND NOT red" vs the plain "a circle" on the same seeds: share with a red circle; share with a
           circle
  edit     "[a red circle:a blue circle:WHEN]": share with a blue circle (and a red one), for each WHEN
  stages   a layout prompt ("a circle at the top left") for stages 1..L and a colour prompt ("a blue circle") for
           the rest: share whose circle is at the layout's position with the later colour (and of those, the
           share with no other object); baseline: the one sentence "a blue circle at the top left"
Cost: steps per second of AND with 1-4 parts: the engine's one batched UNet call per step vs the same run with
each conditioning evaluated in its own UNet call (the same engine, its UNet wrapped to split the batch).

    python bench/composition.py [--seeds-per-pair 4] [--pairs 25] [--n 100] [--cfg 3] [--sampler "Euler a"]
                                [--seed-offset 100000] [--skip-cost] [--split-touching]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._common import machine, print_table, summary, write_results  # noqa: E402
from studio.composition import Region, StagePrompt  # noqa: E402
from studio.controllers.compose import CompositionController, CompositionRequest, PromptPart  # noqa: E402
from studio.engine import Engine, GenerationRequest  # noqa: E402
from studio.models import load_model  # noqa: E402
from studio.tinyworld.analyzer import analyze  # noqa: E402
from studio.tinyworld.vocab import COLUMNS, ROWS, position_phrase  # noqa: E402

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]
SHAPES = ["circle", "square", "triangle"]
AND_PARTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


def phrase(colour: str, shape: str) -> str:
    return f"an {colour} {shape}" if colour[0] in "aeiou" else f"a {colour} {shape}"


def has(objects, colour=None, shape=None, side=None, cell=None) -> bool:
    for o in objects:
        if colour is not None and o.colour != colour:
            continue
        if shape is not None and o.shape != shape:
            continue
        if side == "left" and o.cx >= 32 or side == "right" and o.cx < 32:
            continue
        if cell is not None and (o.column, o.row) != cell:
            continue
        return True
    return False


class Bench:
    def __init__(self, controller: CompositionController, base: GenerationRequest, batch: int,
                 split_touching: bool = False):
        self.c, self.base, self.batch = controller, base, batch
        self.split_touching = split_touching
        self.images = 0
        self.seconds = 0.0

    def run(self, seeds: list[int], **request) -> list:
        """Analyses of one image per seed (consecutive seeds run as batches)."""
        out = []
        prompt = request.pop("prompt")
        for i in range(0, len(seeds), self.batch):
            chunk = seeds[i:i + self.batch]
            base = replace(self.base, prompt=prompt, seed=chunk[0], batch_size=len(chunk))
            assert chunk == list(range(chunk[0], chunk[0] + len(chunk))), "seeds of a batch must be consecutive"
            t0 = time.perf_counter()
            outcome = self.c.compose(CompositionRequest(base=base, **request))
            self.seconds += time.perf_counter() - t0
            self.images += len(chunk)
            out += [analyze(im, split_touching=self.split_touching).objects for im in outcome.images]
        return out


def pair_specs(n_pairs: int, seed: int = 0) -> list[tuple[str, str, str, str]]:
    rng = random.Random(seed)
    specs = []
    while len(specs) < n_pairs:
        c1, c2 = rng.sample(COLOURS, 2)
        s1, s2 = rng.sample(SHAPES, 2)
        specs.append((c1, s1, c2, s2))
    return specs


def bench_pairs(b: Bench, n_pairs: int, per_pair: int, seed0: int, positioned: bool = False,
                region_weights: tuple[float, ...] = (), and_weights: tuple[float, ...] = ()) -> dict:
    """``positioned``: each object's phrase also names its side ("... on the left" / "... on the right"), for the
    monolithic prompt and AND only (regions place by their boxes). ``region_weights``: more rows of added regions,
    both at that weight (the plain "regions" row is weight 1). ``and_weights``: more rows of AND with both parts at
    that weight (the plain "and" row is weight 1; 0.5 each guides as hard in total as the monolithic prompt)."""
    weighted = {f"regions_weight_{w:g}": w for w in region_weights}
    and_weighted = {f"and_weight_{w:g}": w for w in and_weights}
    ways = ("monolithic", "and", *and_weighted)
    if not positioned:
        ways += ("regions", "regions_average", *weighted)
    counts = {k: {"bound": 0, "bound_exact": 0, "placed": 0, "both_placed": 0, "n": 0} for k in ways}
    for j, (c1, s1, c2, s2) in enumerate(pair_specs(n_pairs)):
        a, bb = phrase(c1, s1), phrase(c2, s2)
        if positioned:
            a, bb = f"{a} on the left", f"{bb} on the right"
        seeds = list(range(seed0 + j * per_pair, seed0 + (j + 1) * per_pair))
        runs = {
            "monolithic": b.run(seeds, prompt=f"{a} and {bb}"),
            "and": b.run(seeds, prompt="", parts=(PromptPart(a), PromptPart(bb))),
        }
        for way, w in and_weighted.items():
            runs[way] = b.run(seeds, prompt="", parts=(PromptPart(a, w), PromptPart(bb, w)))
        if not positioned:
            halves = (Region(a, 0, 0, 0.5, 1), Region(bb, 0.5, 0, 1, 1))
            runs["regions"] = b.run(seeds, prompt="", regions=halves, feather=0.05, region_mode="add")
            runs["regions_average"] = b.run(seeds, prompt="", regions=halves, feather=0.05, region_mode="average")
            for way, w in weighted.items():
                heavy = tuple(replace(r, weight=w) for r in halves)
                runs[way] = b.run(seeds, prompt="", regions=heavy, feather=0.05, region_mode="add")
        for way, analyses in runs.items():
            for objs in analyses:
                bound = has(objs, c1, s1) and has(objs, c2, s2)
                left, right = has(objs, c1, s1, side="left"), has(objs, c2, s2, side="right")
                k = counts[way]
                k["n"] += 1
                k["bound"] += bound
                k["bound_exact"] += bound and len(objs) == 2
                k["placed"] += left + right
                k["both_placed"] += left and right
    return {way: {"bound": k["bound"] / k["n"], "bound_exact": k["bound_exact"] / k["n"],
                  "placed_per_object": k["placed"] / (2 * k["n"]), "both_placed": k["both_placed"] / k["n"],
                  "n": k["n"]} for way, k in counts.items()}


def bench_not(b: Bench, n: int, seed0: int) -> dict:
    seeds = list(range(seed0, seed0 + n))
    out = {}
    for name, kwargs in (("a circle AND NOT red", {"prompt": "", "parts": (PromptPart("a circle"),
                                                                             PromptPart("red", -1.0))}),
                         ("a circle", {"prompt": "a circle"})):
        objs = b.run(seeds, **kwargs)
        out[name] = {"red_circle": sum(has(o, "red", "circle") for o in objs) / n,
                     "circle": sum(has(o, shape="circle") for o in objs) / n,
                     "red_anything": sum(has(o, "red") for o in objs) / n, "n": n}
    return out


def bench_edit(b: Bench, n: int, seed0: int, whens: list[float]) -> dict:
    seeds = list(range(seed0, seed0 + n))
    out = {}
    prompts = [f"[a red circle:a blue circle:{w:g}]" for w in whens] + ["a blue circle", "a red circle"]
    for prompt in prompts:
        objs = b.run(seeds, prompt=prompt)
        out[prompt] = {"blue_circle": sum(has(o, "blue", "circle") for o in objs) / n,
                       "red_circle": sum(has(o, "red", "circle") for o in objs) / n, "n": n}
    return out


def bench_stages(b: Bench, n: int, seed0: int, layout_stages: int, per_group: int) -> dict:
    cells = [(c, r) for r in ROWS for c in COLUMNS if (c, r) != ("center", "middle")]
    hits = {"staged": [0, 0, 0, 0], "one_sentence": [0, 0, 0, 0]}
    groups = n // per_group
    for g in range(groups):
        cell = cells[g % len(cells)]
        colour = COLOURS[(g * 5 + 1) % len(COLOURS)]
        where = position_phrase(*cell)
        seeds = list(range(seed0 + g * per_group, seed0 + (g + 1) * per_group))
        colour_prompt = f"{phrase(colour, 'circle')}"
        runs = {
            "staged": b.run(seeds, prompt=colour_prompt,
                            stages=(StagePrompt(f"a circle {where}", 1, layout_stages),)),
            "one_sentence": b.run(seeds, prompt=f"{colour_prompt} {where}"),
        }
        for way, analyses in runs.items():
            for objs in analyses:
                h = hits[way]
                h[0] += has(objs, colour, "circle", cell=cell)
                h[1] += has(objs, shape="circle", cell=cell)
                h[2] += has(objs, colour, "circle")
                h[3] += has(objs, colour, "circle", cell=cell) and len(objs) == 1
    total = groups * per_group
    return {way: {"position_and_colour": h[0] / total, "position": h[1] / total, "colour": h[2] / total,
                  "position_and_colour_one_object": h[3] / total, "n": total} for way, h in hits.items()}


class SplitUNet(torch.nn.Module):
    """The model's UNet, called once per conditioning instead of once per step (the baseline for the cost)."""

    def __init__(self, unet, parts: int):
        super().__init__()
        self.unet, self.parts = unet, parts

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample, t, encoder_hidden_states=None, return_dict=False):
        outs = [self.unet(x, t, encoder_hidden_states=e, return_dict=False)[0]
                for x, e in zip(sample.chunk(self.parts), encoder_hidden_states.chunk(self.parts))]
        return (torch.cat(outs),)


def bench_cost(model, base: GenerationRequest, repeats: int) -> list[dict]:
    rows = []
    for k in range(1, 5):
        prompt = " AND ".join(AND_PARTS[:k])
        req = replace(base, prompt=prompt, batch_size=1, seed=0)
        split_model = replace(model, unet=SplitUNet(model.unet, k + 1))
        times = {"batched": [], "one_at_a_time": []}
        for name, m in (("batched", model), ("one_at_a_time", split_model)):
            Engine(m).generate(replace(req, steps=2))  # warm-up
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            for name, m in (("batched", model), ("one_at_a_time", split_model)):
                result = Engine(m).generate(req)
                times[name].append(result.timings["per_step"])
        p50 = {name: summary(v)["p50_s"] for name, v in times.items()}
        rows.append({"parts": k, "unet_batch": k + 1, "steps_per_s_batched": 1 / p50["batched"],
                     "steps_per_s_one_at_a_time": 1 / p50["one_at_a_time"],
                     "speedup": p50["one_at_a_time"] / p50["batched"],
                     "per_step_s": {n: summary(v) for n, v in times.items()}})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--pairs", type=int, default=25)
    p.add_argument("--seeds-per-pair", type=int, default=4)
    p.add_argument("--n", type=int, default=100, help="seeds for the NOT, edit and stage tests")
    p.add_argument("--cfg", type=float, default=None, help="default: the model's default")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default=None, help="default: the model's default (DPM++ 2M on Tiny World)")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--whens", default="0.2,0.35,0.5")
    p.add_argument("--layout-stages", type=int, default=3)
    p.add_argument("--stage-group", type=int, default=5, help="seeds per (position, colour) group")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default="pair,pair_positioned,not,edit,stages,cost")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--region-weights", default="2.5",
                   help="extra rows of added regions at these weights (comma-separated; weight 1 is always run)")
    p.add_argument("--and-weights", default="",
                   help="extra rows of AND with both parts at these weights (comma-separated; weight 1 is always run)")
    p.add_argument("--split-touching", action="store_true",
                   help="let the analyzer separate touching objects of clearly different colours (two objects "
                        "that touch are otherwise read as one)")
    p.add_argument("--seed-offset", type=int, default=0,
                   help="added to every seed (0: the seeds of the committed results; another value re-draws them)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    if args.skip_cost:
        only.discard("cost")

    model = load_model(args.model)
    controller = CompositionController(model)
    defaults = controller.defaults()
    base = replace(defaults, negative_prompt="", steps=args.steps,
                   cfg=defaults.cfg if args.cfg is None else args.cfg,
                   sampler=defaults.sampler if args.sampler is None else args.sampler)
    b = Bench(controller, base, args.batch, split_touching=args.split_touching)
    results: dict = {"model": args.model, "weights_hash": model.weights_hash, "sampler": base.sampler,
                     "steps": base.steps, "cfg": base.cfg, "split_touching": args.split_touching,
                     "seed_offset": args.seed_offset}
    seed0 = 10_000 + args.seed_offset
    and_weights = tuple(float(w) for w in args.and_weights.split(",") if w)
    if "pair" in only:
        results["pair"] = bench_pairs(b, args.pairs, args.seeds_per_pair, seed0,
                                      region_weights=tuple(float(w) for w in args.region_weights.split(",") if w),
                                      and_weights=and_weights)
        print_table(["way", "bound", "bound, exactly 2", "placed (per object)", "both placed", "n"],
                    [[w, r["bound"], r["bound_exact"], r["placed_per_object"], r["both_placed"], r["n"]]
                     for w, r in results["pair"].items()])
    if "pair_positioned" in only:
        results["pair_positioned"] = bench_pairs(b, args.pairs, args.seeds_per_pair, seed0, positioned=True,
                                                 and_weights=and_weights)
        print_table(["way (objects named with their side)", "bound", "bound, exactly 2", "placed (per object)",
                     "both placed", "n"],
                    [[w, r["bound"], r["bound_exact"], r["placed_per_object"], r["both_placed"], r["n"]]
                     for w, r in results["pair_positioned"].items()])
    if "not" in only:
        results["not"] = bench_not(b, args.n, seed0 + 1000)
        print_table(["prompt", "red circle", "circle", "anything red", "n"],
                    [[k, r["red_circle"], r["circle"], r["red_anything"], r["n"]] for k, r in results["not"].items()])
    if "edit" in only:
        results["edit"] = bench_edit(b, args.n, seed0 + 2000, [float(w) for w in args.whens.split(",")])
        print_table(["prompt", "blue circle", "red circle", "n"],
                    [[k, r["blue_circle"], r["red_circle"], r["n"]] for k, r in results["edit"].items()])
    if "stages" in only:
        results["stages"] = bench_stages(b, args.n, seed0 + 3000, args.layout_stages, args.stage_group)
        results["stages"]["layout_stages"] = args.layout_stages
        print_table(["way", "position+colour", "position", "colour", "position+colour, nothing else", "n"],
                    [[k, r["position_and_colour"], r["position"], r["colour"], r["position_and_colour_one_object"],
                      r["n"]]
                     for k, r in results["stages"].items() if isinstance(r, dict)])
    results["quality_images"] = b.images
    results["quality_seconds"] = round(b.seconds, 1)
    if "cost" in only:
        results["cost"] = bench_cost(model, replace(base, cfg=base.cfg), args.repeats)
        print_table(["AND parts", "UNet batch", "steps/s batched", "steps/s one at a time", "speedup"],
                    [[r["parts"], r["unet_batch"], r["steps_per_s_batched"], r["steps_per_s_one_at_a_time"],
                      r["speedup"]] for r in results["cost"]])
    results["machine"] = machine(model.device)
    path = write_results("composition", results, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
