"""Analyzer vs ground truth on fresh generator scenes: the instrument's own accuracy."""

from __future__ import annotations

from collections import Counter

from .analyzer import analyze
from .scenes import SceneSpec, generate_scene
from .vocab import TRAIN_SHAPES


def analyzer_agreement(n: int, shapes: tuple[str, ...] = TRAIN_SHAPES, base_seed: int = 1_000_000) -> dict:
    """Rates over n scenes: background, object count (per scene); colour, shape, radius within 1 px,
    position cell (per object, matched to the detected object that overlaps its mask most)."""
    c, objects = Counter(), 0
    for seed in range(base_seed, base_seed + n):
        scene = generate_scene(seed, SceneSpec(shapes=shapes))
        seen = analyze(scene.image)
        c["background"] += seen.background == scene.background
        c["count"] += len(seen.objects) == len(scene.objects)
        for truth, mask in zip(scene.objects, scene.masks):
            objects += 1
            best = max(seen.objects, key=lambda d: (d.mask & mask).sum(), default=None)
            if best is None or not (best.mask & mask).any():
                continue
            c["colour"] += best.colour == truth.colour
            c["shape"] += best.shape == truth.shape
            c["radius_within_1px"] += abs(best.radius - truth.radius) <= 1.0
            c["position"] += (best.column, best.row) == (truth.column, truth.row)
    per_scene = ("background", "count")
    keys = ["background", "count", "colour", "shape", "radius_within_1px", "position"]
    return {k: c[k] / (n if k in per_scene else objects) for k in keys} | {"scenes": n, "objects": objects}
