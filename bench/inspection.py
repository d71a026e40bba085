"""Inspection on Tiny World, measured against ground truth (the analyzer's masks, the generator's scenes).

attention    prompts "a <size> <colour> <shape> on a <background> background" (single) and two such objects joined
             by "and" (different colours and shapes), fixed seeds; each run records DAAM maps
             (studio.inspection.CrossAttentionRecorder, all attn2 layers, all steps). For every drawn object whose
             colour and shape match one object of the prompt: pointing game (the map's peak lies inside the object's
             mask) for its shape word and its colour word, and IoU of the min-max normalised shape-word map
             thresholded at t with the mask; "mean IoU at the best threshold" takes the t in 0.1..0.9 that maximises
             the mean over all objects.
classifier   generator scenes with one object (not model samples): its shape among "a circle", "a square",
             "a triangle", then its colour among "a <colour> <predicted shape>" for the 6 colours (the shape the
             classifier itself found, never the ground truth); shared noise bank, strided timesteps, staged pruning.
             Accuracy and UNet evaluations per image.
information  generator scenes with one object, prompt "a <size> <colour> <shape> on a <background> background"
             (--info-prompt sets another form, e.g. "a {shape}"): the information map of the shape word (given the
             rest of the prompt); share of its mass inside the object's mask, and inside the mask grown by 1 px (the
             rim) and by 4 px (one latent cell), beside the mask's share of the image; per noise level, the level's
             share of the integrand and the share of it inside the mask. --info-space pixel (default, as the studio)
             draws the maps from decoded predictions, --info-space latent upsamples the latent grid (the paper's).
cost         interleaved rounds of the same request: a plain engine run; an engine run with attention capture
             (per-step p50); a whole inspection run (InspectionController.run: attention + every step recorded) vs
             the plain run (wall p50); a plain run right after the inspection run vs the round's first plain run
             (per-step p50: the processors are gone and nothing is left behind), and as a control of order effects
             a second plain run in a row vs the first.

    python bench/inspection.py [--parts attention,classifier,information,cost] [--n 50] [--threads 1]
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
from studio.controllers.inspect import (  # noqa: E402
    ClassifyRequest, InformationRequest, InspectionController, InspectRequest,
)
from studio.inspection import CrossAttentionRecorder  # noqa: E402
from studio.inspection.classifier import parse_stages  # noqa: E402
from studio.models import load_model  # noqa: E402
from studio.tinyworld.analyzer import analyze  # noqa: E402
from studio.tinyworld.scenes import SceneSpec, generate_scene  # noqa: E402

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


def classifier(model, n: int, shape_stages, colour_stages, seed0: int = 50_000) -> dict:
    controller = InspectionController(model)
    hits = {"shape": 0, "colour": 0}
    evals = {"shape": 0, "colour": 0}
    confusion: dict[str, int] = {}
    for i in range(n):
        scene = generate_scene(seed0 + i, SceneSpec(n_objects=1))
        truth = scene.objects[0]
        shape = controller.classify(ClassifyRequest(scene.image, tuple(f"a {s}" for s in SHAPES), stages=shape_stages,
                                                    seed=i))
        predicted_shape = shape.best.split()[-1]
        colour = controller.classify(ClassifyRequest(scene.image, tuple(f"a {c} {predicted_shape}" for c in COLOURS),
                                                     stages=colour_stages, seed=i))
        predicted_colour = colour.best.split()[1]
        hits["shape"] += predicted_shape == truth.shape
        hits["colour"] += predicted_colour == truth.colour
        evals["shape"] += shape.evaluations
        evals["colour"] += colour.evaluations
        if predicted_colour != truth.colour:
            key = f"{truth.colour}->{predicted_colour}"
            confusion[key] = confusion.get(key, 0) + 1
    return {"scenes": n, "shape_accuracy": hits["shape"] / n, "colour_accuracy": hits["colour"] / n,
            "unet_evals_per_image": {k: v / n for k, v in evals.items()},
            "unet_evals_per_image_total": (evals["shape"] + evals["colour"]) / n,
            "shape_stages": [[s.samples, s.keep] for s in shape_stages],
            "colour_stages": [[s.samples, s.keep] for s in colour_stages], "colour_errors": confusion}


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(px):
        padded = np.pad(out, 1)
        out = padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return out


INFO_PROMPT = "a {size} {colour} {shape} on a {background} background"


def information(model, n: int, levels: int, samples: int, seed0: int = 60_000, form: str = INFO_PROMPT,
                space: str = "pixel") -> dict:
    controller = InspectionController(model)
    inside, near, area, near_area, rim, rim_area = [], [], [], [], [], []
    level_inside, level_share = [], []
    by_size: dict[str, list[float]] = {}
    for i in range(n):
        scene = generate_scene(seed0 + i, SceneSpec(n_objects=1))
        o, mask = scene.objects[0], scene.masks[0]
        prompt = form.format(size=o.size, colour=o.colour, shape=o.shape, background=scene.background)
        result = controller.information(InformationRequest(scene.image, prompt, (o.shape,), levels=levels,
                                                           samples=samples, seed=i, space=space))
        m = result.maps["i1"].numpy()
        total = float(m.sum())
        grown, grown1 = grow(mask, 4), grow(mask, 1)
        rim.append(float(m[grown1].sum()) / total)
        rim_area.append(float(grown1.mean()))
        inside.append(float(m[mask].sum()) / total)
        near.append(float(m[grown].sum()) / total)
        area.append(float(mask.mean()))
        near_area.append(float(grown.mean()))
        by_size.setdefault(o.size, []).append(inside[-1])
        per_level = result.level_maps["i1"].numpy()
        totals = per_level.reshape(len(per_level), -1).sum(1)
        level_inside.append([float(lv[mask].sum() / t) if t > 0 else 0.0 for lv, t in zip(per_level, totals)])
        level_share.append((totals / max(totals.sum(), 1e-30)).tolist())
    return {"scenes": n, "levels": levels, "samples": samples, "prompt_form": form, "space": space,
            "mass_inside_mask": float(np.mean(inside)),
            "mass_inside_mask_grown_4px": float(np.mean(near)),
            "mass_inside_mask_grown_1px": float(np.mean(rim)),
            "grown_1px_mask_share_of_image": float(np.mean(rim_area)),
            "mask_share_of_image": float(np.mean(area)),
            "grown_mask_share_of_image": float(np.mean(near_area)),
            "mass_inside_mask_by_size": {k: float(np.mean(v)) for k, v in sorted(by_size.items())},
            "scenes_at_or_above_70pct": float(np.mean([v >= 0.7 for v in inside])),
            "per_level": {"log_snr": list(result.log_snrs),
                          "mass_inside_mask": np.mean(level_inside, 0).round(4).tolist(),
                          "share_of_integrand": np.mean(level_share, 0).round(4).tolist()}}


def cost(model, base: GenerationRequest, repeats: int) -> dict:
    """Interleaved: plain, capture, inspection, plain-right-after-inspection, per round; per-step p50s."""
    engine = Engine(model)
    controller = InspectionController(model)
    side = model.default_size // model.vae_scale_factor
    req = replace(base, prompt="a large red circle on a black background", seed=0, batch_size=1)
    engine.generate(replace(req, steps=2))
    times = {"plain": [], "capture": [], "plain_wall": [], "inspection_wall": [], "plain_after_inspection": [],
             "plain_after_plain": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        times["plain"].append(engine.generate(req).timings["per_step"])
        times["plain_wall"].append(time.perf_counter() - t0)
        rec = CrossAttentionRecorder(slice(1, 2), (side, side))
        times["capture"].append(engine.generate(req, hooks=RunHooks(**rec.hooks_kwargs())).timings["per_step"])
        t0 = time.perf_counter()
        controller.run(InspectRequest(req))
        times["inspection_wall"].append(time.perf_counter() - t0)
        times["plain_after_inspection"].append(engine.generate(req).timings["per_step"])
        times["plain_after_plain"].append(engine.generate(req).timings["per_step"])
    p50 = {k: summary(v)["p50_s"] for k, v in times.items()}
    return {"repeats": repeats, "p50_s": p50, "capture_over_plain": p50["capture"] / p50["plain"],
            "inspection_run_over_plain_run": p50["inspection_wall"] / p50["plain_wall"],
            "plain_after_inspection_over_plain": p50["plain_after_inspection"] / p50["plain"],
            "plain_after_plain_over_plain": p50["plain_after_plain"] / p50["plain"]}


PARTS = ("attention", "classifier", "information", "cost")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--n", type=int, default=50, help="prompts or scenes per measurement")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shape-stages", default="10:2,30:1")
    p.add_argument("--colour-stages", default="10:2,30:1")
    p.add_argument("--levels", type=int, default=12)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--info-prompt", default=INFO_PROMPT,
                   help="information: the prompt per scene ({size} {colour} {shape} {background} filled in)")
    p.add_argument("--info-space", default="pixel", choices=["pixel", "latent"],
                   help="information: maps from decoded predictions (pixel, the studio's default) or the latent grid")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="inspection", help="results file bench/results/NAME.json")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)

    base = replace(model_defaults(model), negative_prompt="", steps=args.steps)
    results = {"model": args.model, "weights_hash": model.weights_hash, "sampler": base.sampler, "steps": base.steps,
               "cfg": base.cfg, "parts": parts, "seconds": {}}
    if "attention" in parts:
        t0 = time.perf_counter()
        results["attention"] = {kind: measure(model, base, prompts(args.n, n_objects, seed), 20_000 + 1000 * seed)
                                for kind, n_objects, seed in (("single", 1, 1), ("pair", 2, 2))}
        results["seconds"]["attention"] = round(time.perf_counter() - t0, 1)
        print_table(["prompts", "objects", "shape word pointing", "colour word pointing", "best t",
                     "mean IoU at best t"],
                    [[k, r["objects"], r["shape_pointing"], r["colour_pointing"], r["best_threshold"],
                      r["mean_iou_at_best"]] for k, r in results["attention"].items()])
    if "classifier" in parts:
        t0 = time.perf_counter()
        r = results["classifier"] = classifier(model, args.n, parse_stages(args.shape_stages),
                                               parse_stages(args.colour_stages))
        results["seconds"]["classifier"] = round(time.perf_counter() - t0, 1)
        print_table(["task", "accuracy", "UNet evals / image"],
                    [["shape (3 prompts)", r["shape_accuracy"], r["unet_evals_per_image"]["shape"]],
                     ["colour (6 prompts)", r["colour_accuracy"], r["unet_evals_per_image"]["colour"]],
                     ["both", "", r["unet_evals_per_image_total"]]])
    if "information" in parts:
        t0 = time.perf_counter()
        r = results["information"] = information(model, args.n, args.levels, args.samples, form=args.info_prompt,
                                                          space=args.info_space)
        results["seconds"]["information"] = round(time.perf_counter() - t0, 1)
        print_table(["shape-word mass inside mask", "inside mask + 1 px", "inside mask + 4 px", "mask share",
                     "mask + 1 px share", "mask + 4 px share"],
                    [[r["mass_inside_mask"], r["mass_inside_mask_grown_1px"], r["mass_inside_mask_grown_4px"],
                      r["mask_share_of_image"], r["grown_1px_mask_share_of_image"], r["grown_mask_share_of_image"]]])
        lv = r["per_level"]
        print_table(["log-SNR", "share of the integrand", "of it inside the mask"],
                    [[f"{a:.2f}", b, c] for a, b, c in zip(lv["log_snr"], lv["share_of_integrand"],
                                                          lv["mass_inside_mask"])])
    if "cost" in parts:
        r = results["cost"] = cost(model, base, args.repeats)
        print_table(["capture / plain (per step)", "inspection run / plain run (wall)",
                     "plain after inspection / plain", "control: plain after plain / plain"],
                    [[r["capture_over_plain"], r["inspection_run_over_plain_run"],
                      r["plain_after_inspection_over_plain"], r["plain_after_plain_over_plain"]]])
    results["machine"] = machine(model.device)
    print(f"wrote {write_results(args.name, results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
