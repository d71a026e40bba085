"""Example images with known attribute values, for learning a direction from pictures instead of phrasings.

An attribute definition may say how to draw an example for any slider value (``"examples"`` in its preset)::

    "examples": {"scene": "radius", "points": [[-1.5, 5], [0, 11], [1.5, 19]]}
    "examples": {"scene": "colour", "points": [[-2, [220, 40, 40]], [0, [240, 140, 30]], [2, [235, 210, 40]]]}

``points`` map slider values to a scene parameter (the subject's radius in pixels of the 64-pixel canvas, or its
RGB colour), interpolated linearly in between. Tiny World's generator then draws the subject with exactly that
parameter (and, at random, a second object, another colour, background and position), with a caption that names
the subject as the prompts of a slider do. These pictures are the ground truth the model is taught to follow:
slider value s must draw the subject at parameter(s), every value in between included (the guidance-target
learner only ever sees what the phrasing pair makes the model draw, which jumps between the sizes it knows).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image

SCENES = ("radius", "colour")
RADIUS_LIMITS = (2.0, 24.0)  # px on the 64-px canvas: smaller is not a shape, larger does not fit with a margin


@dataclass(frozen=True)
class ExampleSpec:
    """How a slider value becomes a picture: ``scene`` (which parameter) and ``points`` ((value, parameter), by
    value). Validated on construction; :meth:`parameter` interpolates."""

    scene: str
    points: tuple

    def __post_init__(self):
        if self.scene not in SCENES:
            raise ValueError(f"examples.scene must be one of {', '.join(SCENES)}, got {self.scene!r}")
        if not isinstance(self.points, tuple) or len(self.points) < 2:
            raise ValueError("examples.points must list at least two [value, parameter] pairs")
        values = []
        for point in self.points:
            if not isinstance(point, tuple) or len(point) != 2:
                raise ValueError(f"each example point must be [value, parameter], got {point!r}")
            value, param = point
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"an example point's value must be a number, got {value!r}")
            values.append(float(value))
            if self.scene == "radius":
                lo, hi = RADIUS_LIMITS
                if isinstance(param, bool) or not isinstance(param, (int, float)) or not lo <= param <= hi:
                    raise ValueError(f"a radius must be a number of pixels in [{lo:g}, {hi:g}], got {param!r}")
            elif not (isinstance(param, tuple) and len(param) == 3
                      and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in param)):
                raise ValueError(f"a colour must be [r, g, b] with integers in 0-255, got {param!r}")
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError("example points must be in increasing order of value, each value once")

    @classmethod
    def from_json(cls, data) -> ExampleSpec:
        if not isinstance(data, dict) or set(data) != {"scene", "points"}:
            raise ValueError('examples must be an object with exactly "scene" and "points"')
        points = data["points"]
        if not isinstance(points, list):
            raise ValueError("examples.points must be a list of [value, parameter] pairs")
        as_tuples = tuple(tuple(tuple(x) if isinstance(x, list) else x for x in p) if isinstance(p, list) else p
                          for p in points)
        return cls(data["scene"], as_tuples)

    def to_json(self) -> dict:
        return {"scene": self.scene, "points": [[v, list(p) if isinstance(p, tuple) else p] for v, p in self.points]}

    @property
    def span(self) -> tuple[float, float]:
        return float(self.points[0][0]), float(self.points[-1][0])

    def parameter(self, value: float):
        """The scene parameter at slider ``value`` (linear between points; clamped to the ends)."""
        pts = self.points
        if value <= pts[0][0]:
            return pts[0][1]
        for (v0, p0), (v1, p1) in zip(pts, pts[1:]):
            if value <= v1:
                w = (value - v0) / (v1 - v0)
                if self.scene == "radius":
                    return p0 + w * (p1 - p0)
                return tuple(round(a + w * (b - a)) for a, b in zip(p0, p1))
        return pts[-1][1]


@dataclass(frozen=True)
class Example:
    value: float
    caption: str
    image: Image.Image


class TinyWorldExamples:
    """Draws :class:`Example` s for one subject word (a Tiny World shape) from a spec.

    Captions vary the way Tiny World's own captions do: the size word ``"medium"`` (what a slider at zero keeps)
    or none, the colour, sometimes the position, a second object of another shape, and the background clause.
    With ``scene == "colour"`` the caption names, in 70% of pictures, the colour at slider zero (the palette colour
    nearest to the spec's value-0 colour), as the prompts a hue slider starts from do ("a blue circle", slid to
    purple): the direction must learn to override the colour the prompt says, not only to fill in an unsaid one
    (Tiny World reads an object's colour mostly from the words after it, which keep saying blue)."""

    def __init__(self, spec: ExampleSpec, subject: str, *, value_range: float):
        from studio.tinyworld.vocab import TRAIN_SHAPES

        if subject not in TRAIN_SHAPES:
            raise ValueError(f"example scenes draw Tiny World shapes ({', '.join(TRAIN_SHAPES)}); "
                             f"got subject {subject!r}")
        self.spec, self.subject, self.value_range = spec, subject, float(value_range)
        self.zero_colour = None
        if spec.scene == "colour":
            from studio.tinyworld.vocab import PALETTE

            zero = spec.parameter(0.0)
            self.zero_colour = min(PALETTE, key=lambda name: sum((a - b) ** 2 for a, b in zip(PALETTE[name], zero)))

    def draw(self, rng: random.Random) -> Example:
        from studio.tinyworld.captions import object_phrase
        from studio.tinyworld.scenes import SceneObject, _place, render
        from studio.tinyworld.vocab import BACKGROUNDS, PALETTE, SIZES, TRAIN_SHAPES, size_word

        # 1. the slider value and what it means for the subject
        value = rng.uniform(-self.value_range, self.value_range)
        param = self.spec.parameter(value)
        by_radius = self.spec.scene == "radius"
        radius = param if by_radius else rng.uniform(SIZES["small"], SIZES["large"])
        colour = rng.choice(list(PALETTE)) if by_radius else self.zero_colour
        background = rng.choice(list(BACKGROUNDS))

        # 2. place the subject, maybe a second object of another shape; caption them as Tiny World does
        centre = _place(rng, radius, [])
        if centre is None:  # pragma: no cover - radii are limited so one object always fits
            raise RuntimeError(f"could not place radius {radius:.1f}")
        # the subject's size word is "medium" (a slider at zero keeps the prompt's) or none; its colour is its own
        # for size sliders, and the colour at slider zero (or none) for colour sliders
        subject = SceneObject(self.subject, colour, "medium" if by_radius else size_word(radius), radius, *centre)
        objects = [subject]
        phrases = [object_phrase(subject, size=(rng.random() < 0.7) if by_radius else rng.random() < 0.5,
                                 colour=by_radius or rng.random() < 0.7, position=rng.random() < 0.3)]
        if rng.random() < 0.35:
            other_radius = rng.uniform(SIZES["tiny"], SIZES["large"])
            other_centre = _place(rng, other_radius, objects)
            if other_centre is not None:
                shape = rng.choice([s for s in TRAIN_SHAPES if s != self.subject])
                other = SceneObject(shape, rng.choice(list(PALETTE)), size_word(other_radius), other_radius,
                                    *other_centre)
                objects.append(other)
                phrases.append(object_phrase(other, size=True, colour=True, position=False))
                rng.shuffle(phrases)
        caption = " and ".join(phrases)
        if rng.random() < 0.8:
            caption += f" on a {background} background"

        # 3. draw (the subject in its exact colour, which may lie between the palette's)
        image, _ = render(background, objects, colours=None if by_radius else {0: param})
        return Example(value, caption, image)


__all__ = ["Example", "ExampleSpec", "SCENES", "TinyWorldExamples"]
