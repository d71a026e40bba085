"""Inspection on Tiny World, measured against the analyzer's masks. So far: cross-attention localization.

attention  prompts "a <size> <colour> <shape> on a <background> background" (single) and two such objects joined by
           "and" (different colours and shapes), fixed seeds; each run records DAAM maps
           (studio.inspection.CrossAttentionRecorder, all attn2 layers, all steps). For every drawn object whose
           colour and shape match one object of the prompt: pointing game (the map's peak lies inside the object's
           mask) for its shape word and its colour word, and IoU of the min-max normalised shape-word map
           thresholded at t with the mask; "mean IoU at the best threshold" takes the t in 0.1..0.9 that maximises
           the mean over all objects. Cost: the same runs with and without capture, p50 per step.

    python bench/inspection.py [--n 50] [--threads 1]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import machine, print_table, summary, write_results  # noqa: E402
from studio.attributes.directions import subject_token_indices  # noqa: E402
from studio.controllers.generate import model_defaults  # noqa: E402
from studio.engine import Engine, GenerationRequest, RunHooks  # noqa: E402
from studio.inspection import CrossAttentionRecorder  # noqa: E402
from studio.models import load_model  # noqa: E402
from studio.tinyworld.analyzer import analyze  # noqa: E402

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]
SHAPES = ["circle", "square", "triangle"]
SIZES = ["medium", "large"]
BACKGROUNDS = ["black", "white", "gray"]
THRESHOLDS = [round(0.1 * k, 1) for k in range(1, 10)]


def phrase(size: str, colour: str, shape: str) -> str:
    return f"a {size} {colour} {shape}"


def prompts(n: int, n_objects: int, seed: int) -> list[tuple[str, list[tuple[str, str]]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        colours, shapes = rng.sample(COLOURS, n_objects), rng.sample(SHAPES, n_objects)
        objects = list(zip(colours, shapes))
        text = " and ".join(phrase(rng.choice(SIZES), c, s) for c, s in objects)
        out.append((f"{text} on a {rng.choice(BACKGROUNDS)} background", objects))
    return out


def measure(model, base: GenerationRequest, cases, seed0: int) -> dict:
    engine, tok = Engine(model), model.tokenizer
    side = model.default_size // model.vae_scale_factor
    shape_hits = colour_hits = n = 0
    ious = {t: [] for t in THRESHOLDS}
    for i, (prompt, objects) in enumerate(cases):
        req = replace(base, prompt=prompt, seed=seed0 + i, batch_size=1)
        rec = CrossAttentionRecorder(slice(1, 2), (side, side))
        result = engine.generate(req, hooks=RunHooks(**rec.hooks_kwargs()))
        heat = rec.aggregate((model.default_size, model.default_size))[0]  # (tokens, H, W)
        drawn = analyze(result.images[0]).objects
        for colour, shape in objects:
            matches = [o for o in drawn if o.colour == colour and o.shape == shape]
            if len(matches) != 1:
                continue
            mask = matches[0].mask
            n += 1
            for word, counter in ((shape, "shape"), (colour, "colour")):
                idx = subject_token_indices(tok, prompt, word)
                m = heat[list(idx)].mean(0).numpy()
                y, x = np.unravel_index(int(m.argmax()), m.shape)
                if counter == "shape":
                    shape_hits += bool(mask[y, x])
                    norm = (m - m.min()) / (m.max() - m.min() + 1e-8)
                    for t in THRESHOLDS:
                        pred = norm >= t
                        union = np.logical_or(pred, mask).sum()
                        ious[t].append(np.logical_and(pred, mask).sum() / union if union else 0.0)
                else:
                    colour_hits += bool(mask[y, x])
    mean_iou = {t: float(np.mean(v)) if v else 0.0 for t, v in ious.items()}
    best = max(mean_iou, key=mean_iou.get)
    return {"objects": n, "shape_pointing": shape_hits / max(n, 1), "colour_pointing": colour_hits / max(n, 1),
            "best_threshold": best, "mean_iou_at_best": mean_iou[best], "mean_iou_by_threshold": mean_iou}


def cost(model, base: GenerationRequest, repeats: int) -> dict:
    engine = Engine(model)
    side = model.default_size // model.vae_scale_factor
    req = replace(base, prompt="a large red circle on a black background", seed=0, batch_size=1)
    times = {"plain": [], "capture": []}
    engine.generate(replace(req, steps=2))
    for _ in range(repeats):
        times["plain"].append(engine.generate(req).timings["per_step"])
        rec = CrossAttentionRecorder(slice(1, 2), (side, side))
        times["capture"].append(engine.generate(req, hooks=RunHooks(**rec.hooks_kwargs())).timings["per_step"])
    p50 = {k: summary(v)["p50_s"] for k, v in times.items()}
    return {"per_step_p50_s": p50, "capture_over_plain": p50["capture"] / p50["plain"],
            "per_step": {k: summary(v) for k, v in times.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--n", type=int, default=50, help="prompts per kind (single, pair)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)

    base = replace(model_defaults(model), negative_prompt="", steps=args.steps)
    t0 = time.perf_counter()
    results = {"model": args.model, "weights_hash": model.weights_hash, "sampler": base.sampler, "steps": base.steps,
               "cfg": base.cfg, "attention": {}}
    for kind, n_objects, seed in (("single", 1, 1), ("pair", 2, 2)):
        results["attention"][kind] = measure(model, base, prompts(args.n, n_objects, seed), 20_000 + 1000 * seed)
    results["attention_seconds"] = round(time.perf_counter() - t0, 1)
    print_table(["prompts", "objects", "shape word pointing", "colour word pointing", "best t", "mean IoU at best t"],
                [[k, r["objects"], r["shape_pointing"], r["colour_pointing"], r["best_threshold"],
                  r["mean_iou_at_best"]] for k, r in results["attention"].items()])
    results["cost"] = cost(model, base, args.repeats)
    print(f"capture / plain per step (p50): {results['cost']['capture_over_plain']:.3f}")
    results["machine"] = machine(model.device)
    print(f"wrote {write_results('inspection-attention', results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
