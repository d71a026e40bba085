"""Procedural Tiny World scenes: seeded, deterministic, with exact ground truth for every object.

A scene is 1-3 non-overlapping coloured shapes on a plain background, drawn at 4x and downsampled so edges are
anti-aliased. A shape of radius r fills the 2r x 2r square centred on it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .vocab import (
    BACKGROUNDS,
    CANVAS,
    COLUMNS,
    PALETTE,
    ROWS,
    SIZE_JITTER,
    SIZES,
    STAR_INNER_RATIO,
    SUPERSAMPLE,
    TRAIN_SHAPES,
    ALL_SHAPES,
    HOLLOW_SHAPES,
    position_cell,
    COLOUR_CYCLE,
    cycle_colour,
)

MIN_GAP = 2.0  # px between the bounding squares of two objects
MARGIN = 1.0  # px between a bounding square and the canvas edge


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    radius: float
    cx: float
    cy: float
    rgb: tuple[int, int, int] | None = None  # exact fill for a colour between the palette's (None: PALETTE[colour])
    hollow: bool = False  # a square or triangle with a hole of half its radius (captions say "hollow")

    @property
    def column(self) -> str:
        return position_cell(self.cx, self.cy)[0]

    @property
    def row(self) -> str:
        return position_cell(self.cx, self.cy)[1]


@dataclass
class Scene:
    image: Image.Image
    background: str
    objects: list[SceneObject]
    masks: list[np.ndarray]  # bool (64, 64) per object
    caption: str = ""
    seed: int = 0
    extras: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- drawing


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx - r, cy + r), (cx + r, cy + r), (cx, cy - r)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * STAR_INNER_RATIO
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    return None


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, hole_fill=None,
               hollow: bool = False) -> None:
    """Draw one shape in canvas coordinates scaled by SUPERSAMPLE onto a supersampled canvas. ``hollow`` (squares and
    triangles) cuts a hole of half the size, in ``hole_fill``, as the ring has (about the triangle's centroid)."""
    if hollow and shape not in HOLLOW_SHAPES:
        raise ValueError(f"only {', '.join(HOLLOW_SHAPES)} can be hollow, not {shape!r} (a hollow circle is the ring)")
    s = SUPERSAMPLE
    x, y, rr = cx * s, cy * s, r * s
    if shape in ("circle", "ring"):
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=fill)
        if shape == "ring":
            h = rr / 2
            draw.ellipse([x - h, y - h, x + h, y + h], fill=hole_fill)
    elif shape == "square":
        draw.rectangle([x - rr, y - rr, x + rr, y + rr], fill=fill)
        if hollow:
            h = rr / 2
            draw.rectangle([x - h, y - h, x + h, y + h], fill=hole_fill)
    elif shape in ("triangle", "star"):
        poly = _shape_polygon(shape, x, y, rr)
        draw.polygon(poly, fill=fill)
        if hollow and shape == "triangle":
            gx, gy = x, y + rr / 3  # centroid
            draw.polygon([(gx + (px - gx) / 2, gy + (py - gy) / 2) for px, py in poly], fill=hole_fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(ALL_SHAPES)}")


def render(background: str, objects: list[SceneObject],
           colours: dict[int, tuple[int, int, int]] | None = None) -> tuple[Image.Image, list[np.ndarray]]:
    """Render objects on a background; returns the 64x64 RGB image and one boolean mask per object.
    ``colours`` overrides the palette colour of the objects at those indices with an exact RGB (slider examples
    draw colours between the palette's)."""
    big = CANVAS * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[background])
    draw = ImageDraw.Draw(canvas)
    masks = []
    for obj in objects:
        fill = (colours or {}).get(len(masks), obj.rgb or PALETTE[obj.colour])
        draw_shape(draw, obj.shape, obj.cx, obj.cy, obj.radius, fill, BACKGROUNDS[background], obj.hollow)
        m = Image.new("L", (big, big), 0)
        draw_shape(ImageDraw.Draw(m), obj.shape, obj.cx, obj.cy, obj.radius, 255, 0, obj.hollow)
        small = np.asarray(m.resize((CANVAS, CANVAS), Image.BOX))
        masks.append(small >= 128)
    image = canvas.resize((CANVAS, CANVAS), Image.BOX)
    return image, masks


# --------------------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SceneSpec:
    """What to draw; None fields are drawn at random. Used by the generator and by tests."""

    n_objects: int | None = None
    shapes: tuple[str, ...] = TRAIN_SHAPES  # shapes allowed when drawing at random
    # radii drawn evenly over each size word's whole range (between the midpoints to its neighbours) instead of
    # +-SIZE_JITTER around it, so the model sees every radius and a size slider has in-between sizes to land on
    continuous_sizes: bool = False
    # share of scenes with one object when n_objects is None; the rest keep two and three objects at 35:20
    single_share: float = 0.45
    # share of objects drawn with a colour anywhere on the wheel between palette neighbours (vocab.cycle_colour),
    # named by the nearest of twelve colour words; the rest keep the six exact palette colours. 0 draws exactly as
    # every stage before 9 did.
    continuous_colours: float = 0.0
    # share of squares and triangles drawn hollow (a hole of half the radius); 0 draws as every stage before 10
    hollow_share: float = 0.0

    def count_weights(self) -> list[float]:
        if self.single_share == 0.45:  # exactly the weights every earlier stage's scenes were drawn with
            return [0.45, 0.35, 0.20]
        if not 0 <= self.single_share <= 1:
            raise ValueError(f"single_share must be a share in [0, 1], got {self.single_share!r}")
        rest = 1.0 - self.single_share
        return [self.single_share, rest * 35 / 55, rest * 20 / 55]


def size_range(size: str) -> tuple[float, float]:
    """The radii whose nearest size word is ``size``: halfway to the neighbouring sizes (the ends keep the
    jitter band)."""
    values = sorted(SIZES.values())
    r = SIZES[size]
    k = values.index(r)
    lo = (values[k - 1] + r) / 2 if k > 0 else r * (1 - SIZE_JITTER)
    hi = (values[k + 1] + r) / 2 if k + 1 < len(values) else r * (1 + SIZE_JITTER)
    return lo, hi


def _place(rng: random.Random, r: float, placed: list[SceneObject]) -> tuple[float, float] | None:
    """Pick a centre for radius r: first a random thirds cell (so positions are balanced), then a point in it."""
    lo, hi = r + MARGIN, CANVAS - r - MARGIN
    for _ in range(40):
        col, row = rng.randrange(3), rng.randrange(3)
        x0, x1 = max(lo, col * CANVAS / 3), min(hi, (col + 1) * CANVAS / 3 - 1e-3)
        y0, y1 = max(lo, row * CANVAS / 3), min(hi, (row + 1) * CANVAS / 3 - 1e-3)
        if x0 > x1 or y0 > y1:
            continue
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if all(_apart(cx, cy, r, o) for o in placed):
            return cx, cy
    return None


def _apart(cx: float, cy: float, r: float, o: SceneObject) -> bool:
    gap_x = abs(cx - o.cx) - (r + o.radius)
    gap_y = abs(cy - o.cy) - (r + o.radius)
    return max(gap_x, gap_y) >= MIN_GAP


def sample_objects(rng: random.Random, spec: SceneSpec = SceneSpec()) -> list[SceneObject]:
    n = spec.n_objects or rng.choices([1, 2, 3], weights=spec.count_weights())[0]
    for _ in range(50):
        objects: list[SceneObject] = []
        for _ in range(n):
            size = rng.choice(list(SIZES))
            # later objects in crowded scenes get a smaller size when the big one does not fit
            for attempt_size in [size] + [s for s in SIZES if SIZES[s] < SIZES[size]][::-1]:
                if spec.continuous_sizes:
                    r = rng.uniform(*size_range(attempt_size))
                else:
                    r = SIZES[attempt_size] * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
                centre = _place(rng, r, objects)
                if centre:
                    colour, rgb = rng.choice(list(PALETTE)), None
                    shape = rng.choice(spec.shapes)
                    if spec.continuous_colours > 0 and rng.random() < spec.continuous_colours:
                        rgb, colour = cycle_colour(rng.uniform(0.0, len(COLOUR_CYCLE)))
                    hollow = (spec.hollow_share > 0 and shape in HOLLOW_SHAPES
                              and rng.random() < spec.hollow_share)
                    objects.append(SceneObject(shape, colour, attempt_size, r, centre[0], centre[1], rgb, hollow))
                    break
        if len(objects) == n:
            return objects
    raise RuntimeError(f"could not place {n} objects")  # pragma: no cover - never seen with n <= 3


def generate_scene(seed: int, spec: SceneSpec = SceneSpec(), caption_rng: random.Random | None = None) -> Scene:
    """A deterministic scene for a seed: image, caption and ground truth."""
    from .captions import caption_for

    rng = random.Random(seed)
    background = rng.choice(list(BACKGROUNDS))
    objects = sample_objects(rng, spec)
    image, masks = render(background, objects)
    caption = caption_for(background, objects, caption_rng or random.Random(seed ^ 0x5EED))
    return Scene(image=image, background=background, objects=objects, masks=masks, caption=caption, seed=seed)


def scene_from_objects(background: str, objects: list[SceneObject]) -> Scene:
    image, masks = render(background, objects)
    return Scene(image=image, background=background, objects=objects, masks=masks)


__all__ = [
    "Scene",
    "SceneObject",
    "SceneSpec",
    "generate_scene",
    "render",
    "scene_from_objects",
    "sample_objects",
    "COLUMNS",
    "ROWS",
]
