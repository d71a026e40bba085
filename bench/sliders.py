"""Attribute sliders on Tiny World, measured with the analyzer, for each way of driving a slider.

Sweeps (every one a batched run of all values on one seed's noise, through AttributesController.sweep):
  size    single-object prompts ("a medium red circle on a black background"), size slider on the shape word:
          Spearman rho(value, measured radius); kept: share of frames whose object has the colour and shape of
          the same seed's frame at zero; smooth (share of sweeps
          in which no step between adjacent values moves the radius by more than 35% of the sweep's range)
  pair    "a medium red circle and a medium blue square ...": the circle's size slider; median over sweeps of the
          largest relative change of the square's radius (should stay < 10%; a frame without a square counts
          as 100%) and of the circle's (far larger); "pair other/frame" the square's change frame by frame, median
          (a lenient reading); "within 10%" the share of sweeps whose square stays within 10% in every frame;
          "square kept" is the share of frames that still show one; "sq px kept>=95%" the
          share of frames in which >= 95% of the zero frame's square pixels that the circle does not now cover are
          unchanged (a partly covered square may no longer match the square template);
          only seeds whose slider-at-zero image shows both a circle and a square are swept (the first n found);
          with --pair-zero bound only those showing the circle and the square each in its prompt colour, and every
          frame's circle and square are then the objects of those colours (a blue circle drawn for "a red circle and
          a blue square" is not the prompt's circle; until 2026-12-02 every sweep used the shapes-only reading)
  hue     "a medium orange circle ...": hue red-yellow slider; Spearman rho(value, measured hue)
  hue2    "a medium blue circle ...": hue blue-purple slider; Spearman rho(value, measured hue) (--hue2-colour
          indigo: "a medium indigo circle ...", from the colour between, as hue starts from orange)
Speed (same process, same settings): p50 of a slider re-render (prompt encoding cached, new value each time) vs
a plain generation; a local slider render (with its reference row) vs the same; an 8-value batched sweep vs 8
sequential renders.

Methods: naive, learned (guidance-matched), learned-images (learned from example pictures drawn at every value;
only attributes whose preset has "examples", so the hue parts skip it), weight. A method may carry "+local" (e.g.
naive+local): the same slider with local blending (SubjectLocalBlend: everything but the subject kept as at zero).

    python bench/sliders.py [--seeds 16] [--values 9] [--methods naive,learned,weight,naive+local] [--learn-steps 200]
                            [--parts size,pair,hue] [--delay 0.0]

Why sweeps jump (--size-words-from RESULTS.json, no slider): each saved size sweep's prompt is rendered at its seed
with each size word the model knows (five; nine with fine sizes) in place of the prompt's, and every sweep's largest step is checked: does
it start and end within 1 px of two different size-word renders of that seed (the slider leaping from the seed's
"medium" picture to its "large" one, say)? And are two neighbouring size words' renders at that seed already more
than 35% of the sweep's range apart (the model itself jumping between sizes one word apart)?
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from bench._common import machine, print_table, summary, write_results  # noqa: E402
from studio.attributes.learning import ImageLearnSettings, LearnSettings  # noqa: E402
from studio.controllers.attributes import (  # noqa: E402
    AttributeRequest, AttributesController, SliderSession, SliderSetting, SweepRequest,
)
from studio.engine import GenerationRequest  # noqa: E402
from studio.models import load_model  # noqa: E402
from studio.tinyworld.analyzer import analyze  # noqa: E402
from studio.tinyworld.vocab import known_size_words  # noqa: E402

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]
BACKGROUNDS = ["black", "white", "gray"]
SHAPES = ["circle", "square", "triangle"]


def rho(x, y) -> float:
    if len(set(y)) < 2:
        return 0.0
    r = spearmanr(x, y).statistic
    return 0.0 if np.isnan(r) else float(r)


def main_object(analysis, shape: str | None = None, colour: str | None = None):
    """The largest object, or the largest one matching shape/colour when asked."""
    objs = [o for o in analysis.objects if (shape is None or o.shape == shape) and (colour is None or o.colour == colour)]
    return objs[0] if objs else None


def unwrap_hue(h: float) -> float:
    return h - 360.0 if h > 300 else h  # red sits at both ends of the hue circle


def size_cases(n, size_word: str = "medium"):
    """``size_word``: the size the prompt states ("" states none, so the seed alone sets the size at zero)."""
    cases = []
    for i in range(n):
        shape, colour, bg = SHAPES[i % 3], COLOURS[(i // 3) % 6], BACKGROUNDS[(i // 2) % 3]
        words = f"{size_word} {colour}" if size_word else colour
        article = "an" if words[0] in "aeiou" else "a"
        cases.append((f"{article} {words} {shape} on a {bg} background", shape, colour, 100 + i))
    return cases


def pair_cases(n):
    pairs = [("red", "blue"), ("blue", "yellow"), ("green", "purple"), ("orange", "green"), ("purple", "red"),
             ("yellow", "blue")]
    cases = []
    for i in range(n):
        a, b = pairs[i % len(pairs)]
        bg = BACKGROUNDS[i % 3]
        cases.append((f"a medium {a} circle and a medium {b} square on a {bg} background", a, b, 200 + i))
    return cases


def pair_sweeps_within(records: list[dict], zero: int, limit: float = 0.10) -> float | None:
    """Share of the two-object sweeps (zero frame showing both objects) in which the square's radius stays within
    ``limit`` of the zero frame's in every frame (a missing square is outside)."""
    ok = []
    for rec in records:
        r_sq, r_ci = rec["square"][zero], rec["circle"][zero]
        if r_sq and r_ci:
            ok.append(all(r is not None and abs(r - r_sq) / r_sq < limit for r in rec["square"]))
    return statistics.mean(ok) if ok else None


def pair_change_per_frame(records: list[dict], zero: int) -> float | None:
    """The lenient reading of the two-object bar: the square's relative change in every frame but the zero one (a
    missing square counts as 100%), median over all frames of the sweeps whose zero frame shows both objects."""
    changes = []
    for rec in records:
        r_sq, r_ci = rec["square"][zero], rec["circle"][zero]
        if r_sq and r_ci:
            changes += [abs(r - r_sq) / r_sq if r else 1.0 for k, r in enumerate(rec["square"]) if k != zero]
    return statistics.median(changes) if changes else None


def square_pixels_kept(frames, analyses, zero: int, circle_colour: str | None = None,
                       square_colour: str | None = None) -> list[float] | None:
    """Per frame, the share of the zero frame's square pixels that are unchanged (RGB within 40) among those the
    circle does not now cover (nearer the circle's colour than the square's): the other object kept where it is
    still visible, read from pixels (a square the circle partly covers may no longer match the analyzer's square
    template). ``None`` when the zero frame lacks either object."""
    c0 = main_object(analyses[zero], "circle", circle_colour)
    s0 = main_object(analyses[zero], "square", square_colour)
    if c0 is None or s0 is None:
        return None
    ref = np.asarray(frames[zero].convert("RGB"), np.float32)[s0.mask]
    circle_rgb, square_rgb = np.asarray(c0.rgb, np.float32), np.asarray(s0.rgb, np.float32)
    shares = []
    for frame in frames:
        px = np.asarray(frame.convert("RGB"), np.float32)[s0.mask]
        covered = np.linalg.norm(px - circle_rgb, axis=1) < np.linalg.norm(px - square_rgb, axis=1)
        same = np.linalg.norm(px - ref, axis=1) <= 40.0
        visible = ~covered
        shares.append(round(float(same[visible].mean()) if visible.any() else 1.0, 4))
    return shares


def size_word_check(model, saved: dict, cfg: float, steps: int, tolerance: float = 1.0) -> dict:
    """For every size sweep in ``saved`` (a results file): the radius of its seed's render with each size word, and
    whether the sweep's largest step runs between two different ones (both ends within ``tolerance`` px)."""
    from studio.engine import Engine

    engine, out, rendered = Engine(model), {}, {}  # methods share prompts and seeds: render each once
    size_words = known_size_words(model.tokenizer)  # the model's own: five, or nine with fine sizes
    word = saved.get("size_word") or "medium"
    for method, result in saved["methods"].items():
        records = []
        for sweep in result.get("size_sweeps", []):
            if word not in sweep["prompt"].split():
                raise SystemExit(f"{sweep['prompt']!r} has no size word {word!r} to replace")
            radii = []
            for w in size_words:
                prompt = " ".join(w if t == word else t for t in sweep["prompt"].split())
                if (prompt, sweep["seed"]) not in rendered:
                    image = engine.generate(GenerationRequest(prompt=prompt, seed=sweep["seed"], cfg=cfg,
                                                              steps=steps)).images[0]
                    o = main_object(analyze(image))
                    rendered[prompt, sweep["seed"]] = round(o.radius, 2) if o else 0.0
                radii.append(rendered[prompt, sweep["seed"]])
            r = sweep["radii"]
            span = max(r) - min(r)
            steps_ = [abs(b - a) for a, b in zip(r, r[1:])]
            k = int(np.argmax(steps_))
            near = [min(range(len(size_words)), key=lambda j: abs(radii[j] - x)) for x in (r[k], r[k + 1])]
            between = all(abs(radii[j] - x) <= tolerance for j, x in zip(near, (r[k], r[k + 1]))) \
                and near[0] != near[1]
            # the seed's own size words, one size apart, already differ by more than the smoothness limit
            word_gap = max(abs(b - a) for a, b in zip(radii, radii[1:])) / span if span > 0 else 0.0
            records.append({"seed": sweep["seed"], "smooth": span > 0.5 and max(steps_) <= 0.35 * span,
                            "word_radii": radii, "largest_step": [r[k], r[k + 1]],
                            "largest_step_between_word_renders": between,
                            "largest_word_gap_over_range": round(word_gap, 3)})
        jumps = [x for x in records if not x["smooth"]]
        smooth = [x for x in records if x["smooth"]]
        out[method] = {
            "sweeps": len(records), "jumps": len(jumps),
            "jumps_between_word_renders": sum(x["largest_step_between_word_renders"] for x in jumps),
            "smooth_largest_step_between_word_renders": sum(x["largest_step_between_word_renders"] for x in smooth),
            "jumps_with_word_gap_over_35": sum(x["largest_word_gap_over_range"] > 0.35 for x in jumps),
            "smooth_with_word_gap_over_35": sum(x["largest_word_gap_over_range"] > 0.35 for x in smooth),
            "records": records}
    return out


def run_sweeps(controller, method, values, n, cfg, steps, learn_steps, log, hue2=True,
               parts=("size", "pair", "hue"), delay=0.0, size_word="medium", learn_scale_max=None,
               pair_zero="shapes", learn_noisy_share=0.0, hue2_colour="blue"):
    rows = {}
    base = dict(cfg=cfg, steps=steps)
    method, _, option = method.partition("+")  # "naive+local": the naive slider with local blending
    if option not in ("", "local"):
        raise SystemExit(f"unknown method option {option!r} in {method}+{option}; allowed: local")
    local = option == "local"

    def learned_ready(attribute, subject):
        if method not in ("learned", "learned-images") or controller.has_learned(attribute, subject, method):
            return
        t0 = time.time()
        settings = ImageLearnSettings(steps=learn_steps, noisy_share=learn_noisy_share) \
            if method == "learned-images" else LearnSettings(steps=learn_steps, scale_max=learn_scale_max)
        controller.learner(attribute, subject, settings).run()
        log(f"  learned {attribute!r} on {subject!r} ({method}) in {time.time() - t0:.0f}s")

    zero = values.index(0.0) if 0.0 in values else len(values) // 2
    if "size" in parts:
        # size, single object; "kept" compares each frame with the same seed's frame at zero (the slider must not
        # change colour or shape), so sweeps whose zero frame shows no object are left out
        rhos, kept, smooth, records = [], [], [], []
        for prompt, shape, colour, seed in size_cases(n, size_word):
            learned_ready("size", shape)
            out = controller.sweep(SweepRequest(GenerationRequest(prompt=prompt, seed=seed, **base),
                                                SliderSetting("size", shape, 0.0, method), tuple(values),
                                                local=local, delay=delay))
            analyses = [analyze(frame) for frame in out.frames]
            objs = [main_object(a) for a in analyses]
            radii = [o.radius if o else 0.0 for o in objs]
            at_zero = objs[zero]
            if at_zero is not None:
                kept += [o is not None and (o.shape, o.colour) == (at_zero.shape, at_zero.colour) for o in objs]
            rhos.append(rho(values, radii))
            span = max(radii) - min(radii)
            steps_ = [abs(b - a) for a, b in zip(radii, radii[1:])]
            smooth.append(span > 0.5 and max(steps_) <= 0.35 * span)
            records.append({"prompt": prompt, "seed": seed, "radii": [round(r, 2) for r in radii],
                            "objects": [f"{o.colour} {o.shape}" if o else None for o in objs],
                            "objects_at_zero": len(analyses[zero].objects)})
        rows["size_rho"] = statistics.mean(rhos)
        rows["size_kept"] = statistics.mean(kept) if kept else None
        rows["size_smooth"] = statistics.mean(smooth)
        # the prompt asks for one object; a second one at zero grows too and merges with it (a jump)
        rows["size_zero_frames_with_more_objects"] = statistics.mean(r["objects_at_zero"] > 1 for r in records)
        # smoothness over the sweeps whose zero frame shows the one object asked for (a diagnostic, not the bar)
        single = [ok for ok, r in zip(smooth, records) if r["objects_at_zero"] == 1]
        rows["size_smooth_one_object_at_zero"] = statistics.mean(single) if single else None
        rows["size_sweeps"] = records
        log(f"  size: rho {rows['size_rho']:.3f} kept {rows['size_kept']:.3f} smooth {rows['size_smooth']:.3f} "
            f"zero frames with more than one object {rows['size_zero_frames_with_more_objects']:.3f}")

    if "pair" in parts:
        # specificity, two objects: seeds are scanned in order and the first n whose zero frame shows both a circle
        # and a square are swept (the model often draws only one of two objects; see the quality bench's binding);
        # the analyzer separates touching objects of different colours here, since a growing circle reaches the
        # square (until 2026-11-30, fourth session, it read them as one object and the square as gone)
        other_change, subject_change, scanned, pair_records = [], [], 0, []
        learned_ready("size", "circle")
        for prompt, a, b, seed in pair_cases(8 * n):
            if len(other_change) == n:
                break
            scanned += 1
            plain = controller.render(AttributeRequest(GenerationRequest(prompt=prompt, seed=seed, **base)))
            an = analyze(plain.images[0], split_touching=True)
            # "bound": the prompt's circle and square are the objects in the prompt's colours
            circle_colour, square_colour = (a, b) if pair_zero == "bound" else (None, None)
            if main_object(an, "circle", circle_colour) is None or main_object(an, "square", square_colour) is None:
                continue
            out = controller.sweep(SweepRequest(GenerationRequest(prompt=prompt, seed=seed, **base),
                                                SliderSetting("size", "circle", 0.0, method), tuple(values),
                                                local=local, delay=delay))
            circles, squares = [], []
            analyses = [analyze(frame, split_touching=True) for frame in out.frames]
            for an in analyses:
                c, s = main_object(an, "circle", circle_colour), main_object(an, "square", square_colour)
                circles.append(c.radius if c else None)
                squares.append(s.radius if s else None)
            visible = square_pixels_kept(out.frames, analyses, zero, circle_colour, square_colour)
            pair_records.append({"prompt": prompt, "seed": seed, "circle": circles, "square": squares,
                                 "square_pixels_kept": visible})
            r_sq, r_ci = squares[zero] or squares[len(values) // 2], circles[zero] or circles[len(values) // 2]
            if not (r_sq and r_ci):
                continue
            # a square that vanishes counts as a 100% change; a circle that vanishes is left out (it did change)
            other_change.append(max(abs(r - r_sq) / r_sq if r else 1.0 for r in squares))
            subject_change.append(max(abs(r - r_ci) / r_ci for r in circles if r))
        rows["pair_sweeps_measured"] = len(other_change)
        rows["pair_seeds_scanned"] = scanned
        rows["pair_sweeps"] = pair_records
        rows["pair_square_kept"] = statistics.mean(
            [sq is not None for rec in pair_records for sq in rec["square"]]) if pair_records else None
        rows["pair_other_change_median"] = statistics.median(other_change) if other_change else None
        # the lenient reading of the bar: the square's change frame by frame (not the sweep's largest), median
        rows["pair_other_change_median_per_frame"] = pair_change_per_frame(pair_records, zero)
        rows["pair_sweeps_within_10"] = pair_sweeps_within(pair_records, zero)
        rows["pair_subject_change_median"] = statistics.median(subject_change) if subject_change else None
        kept_px = [v for rec in pair_records for k, v in enumerate(rec["square_pixels_kept"] or []) if k != zero]
        rows["pair_square_pixels_kept_median"] = statistics.median(kept_px) if kept_px else None
        rows["pair_square_pixels_kept_95"] = statistics.mean([v >= 0.95 for v in kept_px]) if kept_px else None
        log(f"  pair: other {rows['pair_other_change_median']} subject {rows['pair_subject_change_median']} "
            f"({len(other_change)} sweeps, {scanned} seeds scanned)")

    if "hue" in parts:
        hues = [("hue", "hue red-yellow", "orange")] + ([("hue2", "hue blue-purple", hue2_colour)] if hue2 else [])
        for key, attribute, colour in hues:
            if method == "learned-images" and controller.definition(attribute).examples is None:
                log(f"  {attribute}: no example images in its preset, so no learned-images direction")
                continue
            learned_ready(attribute, "circle")
            hue_rhos, hue_records = [], []
            for i in range(n):
                prompt = f"a medium {colour} circle on a {BACKGROUNDS[i % 3]} background"
                out = controller.sweep(SweepRequest(GenerationRequest(prompt=prompt, seed=300 + i, **base),
                                                    SliderSetting(attribute, "circle", 0.0, method), tuple(values),
                                                    local=local, delay=delay))
                hues = []
                for frame in out.frames:
                    obj = main_object(analyze(frame))
                    hues.append(unwrap_hue(obj.hue) if obj else float("nan"))
                ok = [(v, h) for v, h in zip(values, hues) if not np.isnan(h)]
                hue_rhos.append(rho([v for v, _ in ok], [h for _, h in ok]) if len(ok) > 2 else 0.0)
                hue_records.append({"prompt": prompt, "hues": [None if np.isnan(h) else round(h, 1) for h in hues]})
            rows[f"{key}_rho"] = statistics.mean(hue_rhos)
            rows[f"{key}_sweeps"] = hue_records
            log(f"  {attribute}: rho {rows[f'{key}_rho']:.3f}")
    return rows


def speed(controller, cfg, steps, repeats):
    """p50 seconds: plain generation, slider re-render, local re-render (without and with the session's recorded
    reference: the warm-up round records it, as a user's first local render does), 8 sequential renders, one
    8-value batched sweep."""
    prompt = "a medium red circle and a medium blue square on a black background"
    base = GenerationRequest(prompt=prompt, seed=7, cfg=cfg, steps=steps)
    plain_runner = controller.generator.with_store(None)
    session, local_session = SliderSession(), SliderSession()
    limit = controller.definition("size").range
    values = [round(-limit + 2 * limit * i / 7, 3) for i in range(8)]
    plain, slider, local, local_cached, seq, batched = [], [], [], [], [], []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        plain_runner.run(base)
        t1 = time.perf_counter()
        controller.render(AttributeRequest(base, (SliderSetting("size", "circle", values[r % 8]),)), session=session)
        t2 = time.perf_counter()
        controller.render(AttributeRequest(base, (SliderSetting("size", "circle", values[r % 8]),), local=True))
        t_local = time.perf_counter() - t2
        t2c = time.perf_counter()
        controller.render(AttributeRequest(base, (SliderSetting("size", "circle", values[r % 8]),), local=True),
                          session=local_session)
        t_local_cached = time.perf_counter() - t2c
        t2b = time.perf_counter()
        for v in values:
            controller.render(AttributeRequest(base, (SliderSetting("size", "circle", v),)), session=session)
        t3 = time.perf_counter()
        controller.sweep(SweepRequest(base, SliderSetting("size", "circle", 0.0), tuple(values)))
        t4 = time.perf_counter()
        if r:  # the first round warms up caches and allocators
            plain.append(t1 - t0)
            slider.append(t2 - t1)
            local.append(t_local)
            local_cached.append(t_local_cached)
            seq.append(t3 - t2b)
            batched.append(t4 - t3)
    s = {k: summary(v) for k, v in (("plain", plain), ("slider", slider), ("local", local),
                                      ("local_cached", local_cached), ("sequential8", seq), ("batched8", batched))}
    s["slider_over_plain"] = s["slider"]["p50_s"] / s["plain"]["p50_s"]
    s["local_over_plain"] = s["local"]["p50_s"] / s["plain"]["p50_s"]
    s["local_cached_over_plain"] = s["local_cached"]["p50_s"] / s["plain"]["p50_s"]
    s["sequential_over_batched"] = s["sequential8"]["p50_s"] / s["batched8"]["p50_s"]
    s["unet_alone"] = unet_batching(controller.model, cfg, repeats)
    return s


def unet_batching(model, cfg, repeats) -> dict:
    """The ceiling of a batched sweep's gain on this machine: the UNet alone, 8 images in one call against one
    image per call (with CFG's uncond rows: batch 16 vs 2), p50 of ``repeats`` rounds of 10 calls each."""
    rows = 2 if cfg != 1.0 else 1
    unet, size = model.unet, model.unet.config.sample_size
    embeds = torch.randn(1, model.tokenizer.model_max_length, model.text_encoder.config.hidden_size,
                         dtype=unet.dtype, device=model.device)
    t = torch.tensor(500, device=model.device)

    def call(batch: int) -> float:
        x = torch.randn(batch, unet.config.in_channels, size, size, dtype=unet.dtype, device=model.device)
        e = embeds.expand(batch, -1, -1).contiguous()
        t0 = time.perf_counter()
        for _ in range(10):
            unet(x, t, encoder_hidden_states=e)
        return (time.perf_counter() - t0) / 10

    one, eight = [], []
    with torch.no_grad():
        call(rows), call(8 * rows)  # warm-up
        for _ in range(repeats):
            one.append(call(rows))
            eight.append(call(8 * rows))
    out = {"one_image_call": summary(one), "eight_images_call": summary(eight)}
    out["eight_single_calls_over_one_batched"] = 8 * out["one_image_call"]["p50_s"] / out["eight_images_call"]["p50_s"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyworld")
    p.add_argument("--seeds", type=int, default=16, help="sweeps per measurement")
    p.add_argument("--values", type=int, default=9, help="slider values per sweep, evenly in [-range, range]")
    p.add_argument("--range", type=float, default=None,
                   help="default: the size preset's range (1.5), for every part, hue too")
    p.add_argument("--methods", default="naive,learned,weight")
    p.add_argument("--learn-steps", type=int, default=600)
    p.add_argument("--learn-noisy-share", type=float, default=0.0,
                   help="learned-images: share of pictures noised at the noisier half of the timesteps")
    p.add_argument("--learn-scale-max", type=float, default=None,
                   help="learned directions: largest |s| trained on (default: the attribute's range)")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=7, help="speed: timed rounds (plus one warm-up)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-hue2", action="store_true", help="leave out the blue-purple hue sweeps")
    p.add_argument("--parts", default="size,pair,hue", help="which sweeps: size, pair, hue (comma-separated)")
    p.add_argument("--size-word", default="medium",
                   help="size word of the single-object size prompts ('' names no size: the seed sets it at zero)")
    p.add_argument("--delay", type=float, default=0.0, help="fraction of the steps run without the slider")
    p.add_argument("--hue2-colour", default="blue",
                   help="hue2: the colour word of the blue-purple sweeps' prompt (e.g. indigo, the colour between, on "
                        "weights that know it, as the red-yellow sweeps start from orange)")
    p.add_argument("--pair-zero", choices=("shapes", "bound"), default="shapes",
                   help="pair: which zero frames count (shapes: a circle and a square; bound: each in its prompt "
                        "colour, and frames measured by those colours)")
    p.add_argument("--directions", default=str(ROOT / "runs" / "bench_directions"),
                   help="direction cache (learned deltas are trained once and reused)")
    p.add_argument("--out", default=None)
    p.add_argument("--pair-frames-from", nargs="+", default=None, metavar="RESULTS.json",
                   help="only print the frame-by-frame two-object figures of earlier result files (no rendering)")
    p.add_argument("--size-words-from", default=None, metavar="RESULTS.json",
                   help="only check where the saved size sweeps jump: against each seed's size-word renders")
    args = p.parse_args()
    if args.size_words_from:
        saved = json.loads(Path(args.size_words_from).read_text())
        model = load_model(args.model, device="cpu")
        if saved.get("weights_hash") != model.weights_hash:
            raise SystemExit(f"{args.size_words_from} was measured on weights {saved.get('weights_hash')}, "
                             f"not {model.weights_hash}")
        t0 = time.time()
        checked = size_word_check(model, saved, saved.get("cfg", args.cfg), saved.get("steps", args.steps))
        print_table(["method", "sweeps", "jumping", "jumping: largest step between two size-word renders",
                     "smooth: same", "jumping: two neighbouring size words > 35% of the range apart", "smooth: same"],
                    [[m, r["sweeps"], r["jumps"], r["jumps_between_word_renders"],
                      r["smooth_largest_step_between_word_renders"], r["jumps_with_word_gap_over_35"],
                      r["smooth_with_word_gap_over_35"]] for m, r in checked.items()])
        payload = {"machine": machine(torch.device("cpu")), "model": args.model, "weights_hash": model.weights_hash,
                   "from": args.size_words_from, "size_words": known_size_words(model.tokenizer), "tolerance_px": 1.0,
                   "methods": checked, "seconds": round(time.time() - t0)}
        print(f"wrote {write_results('sliders-size-words', payload, args.out)}")
        return 0
    if args.pair_frames_from:
        rows = []
        for path in args.pair_frames_from:
            saved = json.loads(Path(path).read_text())
            zero = saved["values"].index(0.0)
            rows += [[Path(path).name, method, pair_change_per_frame(r["pair_sweeps"], zero),
                      pair_sweeps_within(r["pair_sweeps"], zero)]
                     for method, r in saved["methods"].items()]
        print_table(["results file", "method", "pair other/frame", "pair sweeps within 10%"], rows)
        return 0

    model = load_model(args.model, device="cpu")
    controller = AttributesController(model, directions_root=args.directions)
    ranges = {d.name: d.range for d in controller.definitions()}
    limit = args.range or ranges["size"]
    values = [round(-limit + 2 * limit * i / (args.values - 1), 4) for i in range(args.values)]
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results = {}
    t_start = time.time()
    for method in [m for m in args.methods.split(",") if m]:
        log(f"method {method}")
        results[method] = run_sweeps(controller, method, values, args.seeds, args.cfg, args.steps, args.learn_steps,
                                     log, hue2=not args.skip_hue2, parts=args.parts.split(","),
                                     delay=args.delay, size_word=args.size_word, pair_zero=args.pair_zero,
                                     hue2_colour=args.hue2_colour,
                                     learn_scale_max=args.learn_scale_max, learn_noisy_share=args.learn_noisy_share)
    headers = ["method", "size rho", "kept", "smooth", "pair other", "pair other/frame", "pair subject", "square kept",
               "sq px kept>=95%", "hue rho", "hue2 rho"]
    keys = ["size_rho", "size_kept", "size_smooth", "pair_other_change_median", "pair_other_change_median_per_frame",
            "pair_subject_change_median", "pair_square_kept", "pair_square_pixels_kept_95", "hue_rho", "hue2_rho"]
    rows = [[m] + [r.get(k, "-") for k in keys] for m, r in results.items()]
    if rows:
        print()
        print_table(headers, rows)
    payload = {"machine": machine(torch.device("cpu")), "model": args.model, "weights_hash": model.weights_hash,
               "values": values, "seeds": args.seeds, "cfg": args.cfg, "steps": args.steps,
               "learn_steps": args.learn_steps, "learn_scale_max": args.learn_scale_max,
               "learn_noisy_share": args.learn_noisy_share, "delay": args.delay, "pair_zero": args.pair_zero,
               "hue2_colour": args.hue2_colour,
               "size_word": args.size_word, "parts": args.parts, "methods": results,
               "quality_seconds": round(time.time() - t_start)}
    if not args.skip_speed:
        s = speed(controller, args.cfg, args.steps, args.repeats)
        payload["speed"] = s
        print()
        print_table(["what", "p50 s"], [[k, s[k]["p50_s"]] for k in ("plain", "slider", "local", "local_cached",
                                                                     "sequential8", "batched8")])
        print(f"slider / plain = {s['slider_over_plain']:.3f}   local slider / plain = {s['local_over_plain']:.3f}   "
              f"local, reference recorded / plain = {s['local_cached_over_plain']:.3f}   "
              f"8 sequential / 8 batched = {s['sequential_over_batched']:.2f}   UNet alone, 8 single calls / one "
              f"batched call = {s['unet_alone']['eight_single_calls_over_one_batched']:.2f}")
    name = "sliders-" + "-".join(m.replace("+", "-") for m in args.methods.split(",") if m) if results \
        else "sliders-speed"
    path = write_results(name, payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
