"""Editing on Tiny World, judged by the analyzer: inpainting and prompt-to-prompt.

inpaint  a drawn scene with one object in the left half (random shape, colour, size medium/large, background); the
         mask is the right half (feather 4 px); the prompt names another object ("a <size> <colour> <shape> on the
         right on a <background> background", a different colour and shape; --where '' drops the position words). Per seed: PSNR against the input over the pixels
         the feathered mask leaves untouched (mask < 0.01), and whether the analyzer finds the prompted colour and
         shape with its centre inside the mask; also whether the original object is still there, unchanged
         (colour, shape, IoU >= 0.8 with its mask).

p2p      prompt-to-prompt word swap "a large red circle and a medium <colour> <shape> on a <background> background"
         -> the same with "blue circle" (other object: not red, not blue, not a circle; --p2p-single: none, "a large
         red circle on a <background> background"), same seed. Per seed: the edit
         has exactly one circle and it is blue; where the source has exactly one circle and it is red (the model
         draws the two-object prompt right in only about half the seeds), the same and the IoU of the two circles'
         masks; objects of the source other than the circle found again in the edit (same colour and shape,
         IoU >= 0.8). Local blend on --blend-words (default "circle", the edited object's noun, as in the paper), or
         with --blend-mask contrast on DiffEdit's noise-contrast mask of the source (estimated first by a render
         of the source that stops at the mask's noise level).

contrast-cost  the cost of that mask, in one run, per seed of the two-object p2p prompts (--n seeds, order rotated):
         the whole edit with the attention mask and with the contrast mask (controller), and the mask's preparation
         two ways: the source's x0 estimate at the mask's noise level (what the controller does) or, as before the
         fourteenth session, a full render of the source encoded back to latents; each then the same 20 UNet
         evaluations of the mask. Also the IoU of the two ways' masks (how much the shortcut changes the mask).

p2p-real the same swap on drawn scenes (a red circle and a non-red, non-blue square or triangle), DDIM-inverted
         under their full caption (--inversion-steps): the source is the truth, so the figures are the edit's.

inversion  drawn scenes (one random object), prompt = their full caption: DDIM inversion with --inversion-steps (50)
         and DDIM reconstruction at CFG 1; PSNR of the reconstruction against the scene.

nulltext drawn scenes as for inversion, reconstructed *with guidance* (--cfg-null, 3.0 = Tiny World's default): from
         the plain DDIM inversion's x_T without null-text optimisation, and with it (--inner-steps 10). PSNR of
         each against the scene, and the optimisation's time.

concept  closed-form concept edit "circle -> square" preserving triangle, square, ring, star (the shipped Tiny World
         presets: UCE and Diff-QuickFix). Per seed one random prompt naming a circle (size, colour, position and
         background each said with probability 0.75) and the same prompt with "triangle" and "square". Edited
         model: circle prompt -> one square; triangle prompt -> one triangle; the prompted colour kept. Original
         model on the same seeds: the square prompt -> one square (the ceiling: the edit can only draw a square as
         well as the model draws one), the circle and triangle prompts -> their shapes. Also read literally
         ("has_*"): the shape among the objects, and for the edit a square with no circle anywhere.

    python bench/editing.py [--parts inpaint,p2p,p2p-real,contrast-cost,inversion,nulltext,concept] [--n 100]
                            [--threads 1]
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

from bench._common import machine, print_table, write_results  # noqa: E402
from studio.controllers.edit import (  # noqa: E402
    EditingController, InpaintRequest, InversionRequest, PromptToPromptRequest,
)
from studio.editing.contrast import contrast_mask, source_x0_at_strength  # noqa: E402
from studio.engine import Engine  # noqa: E402
from studio.models import load_model  # noqa: E402
from studio.tinyworld.analyzer import analyze  # noqa: E402
from studio.tinyworld.captions import full_caption  # noqa: E402
from studio.tinyworld.scenes import (  # noqa: E402
    SceneObject, SceneSpec, generate_scene, sample_objects, scene_from_objects,
)  # noqa: E402
from studio.tinyworld.vocab import BACKGROUNDS, PALETTE, SIZES, TRAIN_SHAPES  # noqa: E402


def inpaint(model, n: int, seed0: int, feather: float, where: str) -> dict:
    controller = EditingController(model)
    rng = random.Random(seed0)
    mask = np.zeros((64, 64), np.float32)
    mask[:, 32:] = 1.0
    psnrs, placed, kept = [], 0, 0
    for i in range(n):
        size = rng.choice(["medium", "large"])
        r = SIZES[size]
        colour, shape = rng.choice(list(PALETTE)), rng.choice(TRAIN_SHAPES)
        background = rng.choice(list(BACKGROUNDS))
        original = SceneObject(shape, colour, size, r, rng.uniform(r + 2, 30 - r), rng.uniform(r + 2, 62 - r))
        scene = scene_from_objects(background, [original])
        want_colour = rng.choice([c for c in PALETTE if c != colour])
        want_shape = rng.choice([s for s in TRAIN_SHAPES if s != shape])
        place = f" {where}" if where else ""
        prompt = f"a {rng.choice(['medium', 'large'])} {want_colour} {want_shape}{place} on a {background} background"
        base = replace(controller.defaults(), prompt=prompt, seed=seed0 + i)
        out = controller.inpaint(InpaintRequest(base, scene.image, mask, feather=feather), save=False)
        result = np.asarray(out.images[0], dtype=np.float64)
        source = np.asarray(scene.image, dtype=np.float64)
        untouched = out.mask < 0.01
        mse = float(((result - source)[untouched] ** 2).mean())
        psnrs.append(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
        objects = analyze(out.images[0]).objects
        placed += any(o.colour == want_colour and o.shape == want_shape and o.cx >= 32 for o in objects)
        truth = scene.masks[0]
        kept += any(o.colour == colour and o.shape == shape and
                    np.logical_and(o.mask, truth).sum() / np.logical_or(o.mask, truth).sum() >= 0.8 for o in objects)
    psnr = np.array(psnrs)
    return {"seeds": n, "feather_px": feather, "position_words": where, "psnr_outside_mask_db": {
        "min": float(psnr.min()), "median": float(np.median(psnr)), "share_at_or_above_35": float((psnr >= 35).mean())},
        "prompted_object_inside_mask": placed / n, "original_object_kept": kept / n}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def p2p(model, n: int, seed0: int, cross: float, self_fraction: float, blend: bool,
        blend_words: tuple[str, ...], blend_mask: str = "attention", other: bool = True,
        mask_grow: int | None = None) -> dict:
    controller = EditingController(model)
    rng = random.Random(seed0)
    blue = circle_kept = circle_cases = blue_given_source = other_kept = other_cases = 0
    for i in range(n):
        colour = rng.choice([c for c in PALETTE if c not in ("red", "blue")])
        shape = rng.choice(["square", "triangle"])
        background = rng.choice(list(BACKGROUNDS))
        tail = (f" and a medium {colour} {shape}" if other else "") + f" on a {background} background"
        base = replace(controller.defaults(), prompt=f"a large red circle{tail}", seed=seed0 + i)
        out = controller.prompt_to_prompt(PromptToPromptRequest(base, f"a large blue circle{tail}", cross,
                                                                self_fraction, local_blend=blend,
                                                                blend_words=blend_words, blend_mask=blend_mask,
                                                                mask_grow=mask_grow), save=False)
        source, edited = analyze(out.source).objects, analyze(out.edited).objects
        circles = [o for o in edited if o.shape == "circle"]
        ok = len(circles) == 1 and circles[0].colour == "blue"
        blue += ok
        red = [o for o in source if o.shape == "circle" and o.colour == "red"]
        if len(red) == 1 and len([o for o in source if o.shape == "circle"]) == 1:
            circle_cases += 1
            blue_given_source += ok
            circle_kept += ok and iou(red[0].mask, circles[0].mask) >= 0.8
        for o in source:
            if o.shape == "circle":
                continue
            other_cases += 1
            other_kept += any(e.colour == o.colour and e.shape == o.shape and iou(e.mask, o.mask) >= 0.8
                              for e in edited)
    return {"seeds": n, "cross_fraction": cross, "self_fraction": self_fraction, "local_blend": blend,
            "blend_mask": blend_mask, "blend_words": list(blend_words) if blend_mask == "attention" else [],
            "mask_grow": ("default (0 for generated)" if mask_grow is None else mask_grow)
            if blend_mask == "contrast" else None,
            "other_object_in_prompt": other, "edit_has_one_blue_circle": blue / n,
            "seeds_with_one_red_source_circle": circle_cases,
            "one_blue_circle_where_source_has_one_red_circle": blue_given_source / max(circle_cases, 1),
            "circle_iou_at_least_0_8": circle_kept / max(circle_cases, 1),
            "other_objects_unchanged": other_kept / max(other_cases, 1), "other_objects": other_cases}


def contrast_cost(model, n: int, seed0: int) -> dict:
    controller, engine = EditingController(model), Engine(model)
    rng = random.Random(seed0)
    times: dict[str, list[float]] = {k: [] for k in ("edit_attention", "edit_contrast", "mask_from_x0_estimate",
                                                     "mask_from_full_render")}
    mask_iou = []
    for i in range(n):
        colour = rng.choice([c for c in PALETTE if c not in ("red", "blue")])
        shape = rng.choice(["square", "triangle"])
        tail = f" and a medium {colour} {shape} on a {rng.choice(list(BACKGROUNDS))} background"
        base = controller.generator.prepare(replace(controller.defaults(), prompt=f"a large red circle{tail}",
                                                    seed=seed0 + i))
        target = f"a large blue circle{tail}"
        alone = replace(base, batch_size=1, shared_seed=False)
        masks = {}

        def edit(kind: str) -> None:
            controller.prompt_to_prompt(PromptToPromptRequest(base, target, blend_mask=kind), save=False)

        def from_estimate() -> None:
            masks["estimate"] = contrast_mask(model, source_x0_at_strength(engine, alone), base.prompt, target,
                                              seed=base.seed)

        def from_render() -> None:
            image = engine.generate(alone).images[0]
            masks["render"] = contrast_mask(model, controller._latents_of(image)[0], base.prompt, target,
                                            seed=base.seed)

        jobs = [("edit_attention", lambda: edit("attention")), ("edit_contrast", lambda: edit("contrast")),
                ("mask_from_x0_estimate", from_estimate), ("mask_from_full_render", from_render)]
        for k in range(len(jobs)):  # rotate the order so that no job always runs first
            name, job = jobs[(i + k) % len(jobs)]
            t0 = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - t0)
        a, b = masks["estimate"].bool(), masks["render"].bool()
        mask_iou.append(float((a & b).sum() / max(int((a | b).sum()), 1)))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"seeds": n, "median_seconds": {k: round(v, 4) for k, v in med.items()},
            "contrast_edit_over_attention_edit": round(med["edit_contrast"] / med["edit_attention"], 3),
            "mask_full_render_over_estimate": round(med["mask_from_full_render"] / med["mask_from_x0_estimate"], 3),
            "contrast_edit_before_over_now": round((med["edit_contrast"] - med["mask_from_x0_estimate"]
                                                    + med["mask_from_full_render"]) / med["edit_contrast"], 3),
            "mask_iou_estimate_vs_render": {"mean": round(float(np.mean(mask_iou)), 4),
                                            "min": round(float(np.min(mask_iou)), 4)},
            "samples_s": {k: [round(x, 4) for x in v] for k, v in times.items()}}


def p2p_real(model, n: int, seed0: int, steps: int, cross: float, self_fraction: float, blend: bool,
             blend_words: tuple[str, ...], blend_mask: str = "attention", mask_grow: int | None = None) -> dict:
    """The same swap on drawn scenes (a red circle and one other object), DDIM-inverted under their caption: the
    source is exactly what the prompt says, so the figures are the edit's alone."""
    controller = EditingController(model)
    rng = random.Random(seed0)
    blue = circle_kept = other_kept = 0
    psnrs = []
    for i in range(n):
        objects = sample_objects(rng, SceneSpec(n_objects=2, shapes=("square", "triangle")))
        objects[0] = replace(objects[0], shape="circle", colour="red")
        objects[1] = replace(objects[1], colour=rng.choice([c for c in PALETTE if c not in ("red", "blue")]))
        background = rng.choice(list(BACKGROUNDS))
        scene = scene_from_objects(background, objects)
        prompt = full_caption(background, objects)
        base = replace(controller.defaults(), prompt=prompt, steps=steps, seed=0)
        inverted = controller.invert(InversionRequest(base, scene.image))
        psnrs.append(inverted.psnr_db)
        out = controller.prompt_to_prompt(PromptToPromptRequest(
            base, prompt.replace("red circle", "blue circle", 1), cross, self_fraction, local_blend=blend,
            blend_words=blend_words, inverted=inverted, blend_mask=blend_mask, mask_grow=mask_grow), save=False)
        edited = analyze(out.edited).objects
        circles = [o for o in edited if o.shape == "circle"]
        ok = len(circles) == 1 and circles[0].colour == "blue"
        blue += ok
        circle_kept += ok and iou(scene.masks[0], circles[0].mask) >= 0.8
        other_kept += any(e.colour == objects[1].colour and e.shape == objects[1].shape
                          and iou(e.mask, scene.masks[1]) >= 0.8 for e in edited)
    return {"scenes": n, "inversion_steps": steps, "cross_fraction": cross, "self_fraction": self_fraction,
            "local_blend": blend, "blend_mask": blend_mask,
            "mask_grow": ("default (1 for inverted)" if mask_grow is None else mask_grow)
            if blend_mask == "contrast" else None,
            "blend_words": list(blend_words) if blend_mask == "attention" else [],
            "reconstruction_psnr_db_mean": float(np.mean(psnrs)), "edit_has_one_blue_circle": blue / n,
            "circle_iou_at_least_0_8": circle_kept / n, "other_object_unchanged": other_kept / n}


def inversion(model, n: int, seed0: int, steps: int) -> dict:
    controller = EditingController(model)
    psnrs = []
    for i in range(n):
        scene = generate_scene(seed0 + i, SceneSpec(n_objects=1))
        base = replace(controller.defaults(), prompt=full_caption(scene.background, scene.objects), steps=steps, seed=0)
        psnrs.append(controller.invert(InversionRequest(base, scene.image)).psnr_db)
    p = np.array(psnrs)
    return {"scenes": n, "steps": steps, "psnr_db": {"mean": float(p.mean()), "median": float(np.median(p)),
                                                     "min": float(p.min()), "share_at_or_above_25": float((p >= 25).mean())}}


def nulltext(model, n: int, seed0: int, steps: int, cfg: float, inner: int) -> dict:
    from studio.engine import StartLatents

    controller = EditingController(model)
    plain, fitted, seconds = [], [], []

    def psnr(image, scene) -> float:
        a, b = np.asarray(image, dtype=np.float64), np.asarray(scene.image, dtype=np.float64)
        return float(10 * np.log10(255.0 ** 2 / max(float(((a - b) ** 2).mean()), 1e-10)))

    for i in range(n):
        scene = generate_scene(seed0 + i, SceneSpec(n_objects=1))
        base = replace(controller.defaults(), prompt=full_caption(scene.background, scene.objects), steps=steps,
                       seed=0, cfg=cfg, sampler="DDIM")
        inverted = controller.invert(InversionRequest(base, scene.image))
        guided = controller.engine.generate(base, start=StartLatents(inverted.latents, 0))
        plain.append(psnr(guided.images[0], scene))
        out = controller.invert(InversionRequest(base, scene.image, null_text=True, inner_steps=inner))
        fitted.append(out.psnr_db)
        seconds.append(out.timings["null_text"])
    stats = lambda v: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}  # noqa: E731
    return {"scenes": n, "steps": steps, "cfg": cfg, "inner_steps": inner,
            "psnr_db_guided_without_null_text": stats(plain), "psnr_db_guided_with_null_text": stats(fitted),
            "null_text_seconds": stats(seconds)}


def concept_prompts(n: int, seed0: int) -> list[tuple[dict, str]]:
    """``(attributes, prompt template with {shape})`` per seed."""
    from studio.tinyworld.captions import article
    from studio.tinyworld.vocab import COLUMNS, ROWS, position_phrase

    rng = random.Random(seed0)
    out = []
    for _ in range(n):
        keep = {k: rng.random() < 0.75 for k in ("size", "colour", "position", "background")}
        attrs = {"size": rng.choice(list(SIZES)), "colour": rng.choice(list(PALETTE)),
                 "position": position_phrase(rng.choice(COLUMNS), rng.choice(ROWS)),
                 "background": rng.choice(list(BACKGROUNDS))}
        words = [attrs[k] for k in ("size", "colour") if keep[k]] + ["{shape}"]
        text = f"{article(words[0]) if words[0] != '{shape}' else '{article}'} {' '.join(words)}"
        text += f" {attrs['position']}" if keep["position"] else ""
        text += f" on a {attrs['background']} background" if keep["background"] else ""
        out.append(({k: v for k, v in attrs.items() if keep[k]}, text))
    return out


def concept(model, n: int, seed0: int) -> dict:
    from studio.controllers.edit import EditingController as Controller

    controller = Controller(model)
    _, presets = controller.concept_presets()
    chosen = [p for p in presets if p.spec.edits == (("circle", "square"),)]
    edited = {p.spec.method: controller.edit_concepts(p.spec) for p in chosen}
    runners = {"original": controller, **{m: controller.on_edited(e) for m, e in edited.items()}}

    def one(runner, template: str, shape: str, seed: int):
        prompt = template.replace("{shape}", shape).replace("{article}", "a")
        base = replace(controller.defaults(), prompt=prompt, seed=seed)
        return analyze(runner.generator.run(base).images[0]).objects

    counts: dict = {name: {} for name in runners}
    cases = concept_prompts(n, seed0)
    for i, (attrs, template) in enumerate(cases):
        seed = seed0 + i
        for name, runner in runners.items():
            shapes = ("circle", "triangle", "square") if name == "original" else ("circle", "triangle")
            for shape in shapes:
                objects = one(runner, template, shape, seed)
                o = objects[0] if len(objects) == 1 else None
                row = counts[name].setdefault(shape, {
                    "one_circle": 0, "one_square": 0, "one_triangle": 0,
                    "has_circle": 0, "has_square": 0, "has_triangle": 0, "square_and_no_circle": 0,
                    "colour_kept": 0, "colour_cases": 0})
                if o is not None and o.shape in ("circle", "square", "triangle"):
                    row[f"one_{o.shape}"] += 1
                # the literal reading of the bar ("give a square", "still give a triangle"): the shape is among
                # the objects, whatever else Tiny World's partial captions let it draw beside it
                found = {x.shape for x in objects}
                for s in ("circle", "square", "triangle"):
                    row[f"has_{s}"] += s in found
                row["square_and_no_circle"] += "square" in found and "circle" not in found
                if "colour" in attrs:
                    row["colour_cases"] += 1
                    row["colour_kept"] += o is not None and o.colour == attrs["colour"]
    rates = {name: {shape: {k: (v / n if k not in ("colour_kept", "colour_cases") else v)
                            for k, v in row.items()}
                    for shape, row in by_shape.items()} for name, by_shape in counts.items()}
    for by_shape in rates.values():
        for row in by_shape.values():
            row["colour_kept"] = row["colour_kept"] / max(row.pop("colour_cases"), 1)
    return {"seeds": n, "edit_seconds": {m: round(e.seconds, 3) for m, e in edited.items()},
            "edits": {m: e.settings() | {"templates": len(e.delta.spec.templates)} for m, e in edited.items()},
            "rates": rates}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--feather", type=float, default=4.0)
    p.add_argument("--where", default="on the right",
                   help="position words added to the prompt (the mask is the right half); '' for none")
    p.add_argument("--parts", default="inpaint,p2p,inversion")
    p.add_argument("--inversion-steps", type=int, default=50)
    p.add_argument("--cfg-null", type=float, default=3.0, help="nulltext: the guidance reconstructed with")
    p.add_argument("--inner-steps", type=int, default=10, help="nulltext: Adam steps per sampling step (at most)")
    p.add_argument("--cross", type=float, default=0.8)
    p.add_argument("--self-fraction", type=float, default=0.4)
    p.add_argument("--no-blend", action="store_true")
    p.add_argument("--blend-words", default="circle",
                   help="p2p: words whose attention makes the local-blend mask ('' = the words that differ)")
    p.add_argument("--blend-mask", default="attention", choices=["attention", "contrast"],
                   help="p2p: the local-blend mask from the blend words' attention (the paper) or from the two "
                        "prompts' noise-prediction contrast on the source (DiffEdit)")
    p.add_argument("--mask-grow", type=int, default=None,
                   help="p2p, p2p-real with --blend-mask contrast: widen the mask by this many latent pixels "
                        "(default: the controller's, 1 for inverted images, 0 for generated sources)")
    p.add_argument("--p2p-single", action="store_true",
                   help="p2p: one-object prompts ('a large red circle on a <background> background'), no other object")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="editing", help="results file bench/results/NAME.json")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    blend_words = tuple(w.strip() for w in args.blend_words.split(",") if w.strip())
    results = {"model": args.model, "weights_hash": model.weights_hash, "parts": parts, "seconds": {}}
    if "inpaint" in parts:
        t0 = time.perf_counter()
        r = results["inpaint"] = inpaint(model, args.n, 70_000, args.feather, args.where)
        results["seconds"]["inpaint"] = round(time.perf_counter() - t0, 1)
        print_table(["seeds", "PSNR outside mask: min / median dB", "share >= 35 dB", "prompted object in the mask",
                     "original kept"],
                    [[r["seeds"], f"{r['psnr_outside_mask_db']['min']:.1f} / {r['psnr_outside_mask_db']['median']:.1f}",
                      r["psnr_outside_mask_db"]["share_at_or_above_35"], r["prompted_object_inside_mask"],
                      r["original_object_kept"]]])
    if "p2p" in parts:
        t0 = time.perf_counter()
        r = results["p2p"] = p2p(model, args.n, 80_000, args.cross, args.self_fraction, not args.no_blend,
                                 blend_words, args.blend_mask, not args.p2p_single, args.mask_grow)
        results["seconds"]["p2p"] = round(time.perf_counter() - t0, 1)
        print_table(["seeds", "one blue circle", "source has one red circle", "blue there", "circle IoU >= 0.8",
                     "other objects unchanged"],
                    [[r["seeds"], r["edit_has_one_blue_circle"], r["seeds_with_one_red_source_circle"],
                      r["one_blue_circle_where_source_has_one_red_circle"], r["circle_iou_at_least_0_8"],
                      r["other_objects_unchanged"] if r["other_objects"] else "-"]])
    if "p2p-real" in parts:
        t0 = time.perf_counter()
        r = results["p2p_real"] = p2p_real(model, args.n, 85_000, args.inversion_steps, args.cross,
                                           args.self_fraction, not args.no_blend, blend_words, args.blend_mask,
                                           args.mask_grow)
        results["seconds"]["p2p-real"] = round(time.perf_counter() - t0, 1)
        print_table(["inverted scenes", "reconstruction dB", "one blue circle", "circle IoU >= 0.8",
                     "other object unchanged"],
                    [[r["scenes"], f"{r['reconstruction_psnr_db_mean']:.1f}", r["edit_has_one_blue_circle"],
                      r["circle_iou_at_least_0_8"], r["other_object_unchanged"]]])
    if "contrast-cost" in parts:
        t0 = time.perf_counter()
        r = results["contrast_cost"] = contrast_cost(model, args.n, 87_000)
        results["seconds"]["contrast-cost"] = round(time.perf_counter() - t0, 1)
        m = r["median_seconds"]
        print_table(["seeds", "edit, attention mask s", "edit, contrast mask s", "mask from x0 estimate s",
                     "mask from full render s", "contrast edit before / now", "mask IoU (mean / min)"],
                    [[r["seeds"], f"{m['edit_attention']:.2f}", f"{m['edit_contrast']:.2f}",
                      f"{m['mask_from_x0_estimate']:.2f}", f"{m['mask_from_full_render']:.2f}",
                      r["contrast_edit_before_over_now"],
                      f"{r['mask_iou_estimate_vs_render']['mean']:.3f} / {r['mask_iou_estimate_vs_render']['min']:.3f}"]])
    if "inversion" in parts:
        t0 = time.perf_counter()
        r = results["inversion"] = inversion(model, args.n, 90_000, args.inversion_steps)
        results["seconds"]["inversion"] = round(time.perf_counter() - t0, 1)
        print_table(["scenes", "steps", "PSNR mean / median / min dB", "share >= 25 dB"],
                    [[r["scenes"], r["steps"], f"{r['psnr_db']['mean']:.1f} / {r['psnr_db']['median']:.1f} / "
                      f"{r['psnr_db']['min']:.1f}", r["psnr_db"]["share_at_or_above_25"]]])
    if "nulltext" in parts:
        t0 = time.perf_counter()
        r = results["nulltext"] = nulltext(model, args.n, 90_000, args.inversion_steps, args.cfg_null, args.inner_steps)
        results["seconds"]["nulltext"] = round(time.perf_counter() - t0, 1)
        print_table(["scenes", "steps", "CFG", "PSNR guided, no null-text (mean/min)", "with null-text (mean/min)",
                     "null-text s (mean)"],
                    [[r["scenes"], r["steps"], r["cfg"],
                      f"{r['psnr_db_guided_without_null_text']['mean']:.1f} / "
                      f"{r['psnr_db_guided_without_null_text']['min']:.1f}",
                      f"{r['psnr_db_guided_with_null_text']['mean']:.1f} / {r['psnr_db_guided_with_null_text']['min']:.1f}",
                      f"{r['null_text_seconds']['mean']:.1f}"]])
    if "concept" in parts:
        t0 = time.perf_counter()
        r = results["concept"] = concept(model, args.n, 95_000)
        results["seconds"]["concept"] = round(time.perf_counter() - t0, 1)
        rates = r["rates"]
        rows = [["original", "-", rates["original"]["circle"]["one_square"],
                 rates["original"]["triangle"]["one_triangle"], rates["original"]["square"]["one_square"],
                 rates["original"]["circle"]["colour_kept"]]]
        rows += [[m, r["edit_seconds"][m], rates[m]["circle"]["one_square"], rates[m]["triangle"]["one_triangle"],
                  "-", rates[m]["circle"]["colour_kept"]] for m in r["edit_seconds"]]
        print_table(["model", "edit s", "circle prompt -> square", "triangle prompt -> triangle",
                     "square prompt -> square", "colour kept (circle prompts)"], rows)
        rows = [[m, rates[m]["circle"]["square_and_no_circle"], rates[m]["triangle"]["has_triangle"],
                 rates[m]["square"]["has_square"] if "square" in rates[m] else "-"] for m in rates]
        print_table(["model (shape among the objects)", "circle prompt -> a square, no circle",
                     "triangle prompt -> a triangle", "square prompt -> a square"], rows)
    results["machine"] = machine(model.device)
    print(f"wrote {write_results(args.name, results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
