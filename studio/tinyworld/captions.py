"""Caption grammar for Tiny World scenes.

    caption  := "" | objects [" on a " BACKGROUND " background"]
    objects  := object (" and " object)*            every object is mentioned, in random order
    object   := ("a" | "an") [SIZE] [COLOUR] SHAPE [" " POSITION]
    POSITION := "at the top left" | "on the left" | "at the top" | "in the center" | ...

Attributes are omitted at random the way people write, so "a circle" means a circle of any colour, size and
place. Caption styles (shares of the training captions):
  10% empty (for classifier-free guidance), 25% full (every attribute and the background),
  50% mixed (each attribute kept with probability 0.75), 15% sparse (shape plus at most one attribute).

Partial captions (``partial > 0``; the shipped weights' last stages used 0.5): a non-empty caption of a scene with
two or more objects mentions, with probability ``partial``, only a random non-empty proper subset of its objects and
never the background. Then "a red circle" means "a scene with a red circle in it", which is what composable diffusion
(AND) and regional prompts assume of each part; a caption with its background clause still lists every object, so
fully specified prompts keep meaning exactly that scene.

Fine sizes (``fine_sizes``, stage 7 on): the size word is the nearest of nine (vocab.CAPTION_SIZES) to the drawn
radius, not one of the generator's five, so captions say sizes between "small" and "medium" ("smallish") and so on.
"""

from __future__ import annotations

import random
from typing import Sequence

from .vocab import HOLLOW_WORD, caption_size_word, position_phrase

STYLE_WEIGHTS = {"empty": 0.10, "full": 0.25, "mixed": 0.50, "sparse": 0.15}
KEEP_PROBABILITY = 0.75


def article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def object_phrase(obj, *, size: bool, colour: bool, position: bool, fine_sizes: bool = False) -> str:
    """``fine_sizes``: name the size with the nearest of the finer caption words (vocab.CAPTION_SIZES) for the
    object's radius instead of its generator size word."""
    words = []
    if size:
        words.append(caption_size_word(obj.radius) if fine_sizes else obj.size)
    if colour:
        words.append(obj.colour)
    if getattr(obj, "hollow", False):  # part of the shape: always said
        words.append(HOLLOW_WORD)
    words.append(obj.shape)
    phrase = f"{article(words[0])} {' '.join(words)}"
    if position:
        phrase += " " + position_phrase(obj.column, obj.row)
    return phrase


def full_caption(background: str, objects: Sequence, *, with_background: bool = True) -> str:
    """Every attribute of every object, in the given order (benchmark prompts use this)."""
    text = " and ".join(object_phrase(o, size=True, colour=True, position=True) for o in objects)
    if with_background:
        text += f" on a {background} background"
    return text


def caption_for(background: str, objects: Sequence, rng: random.Random, *, partial: float = 0.0,
                fine_sizes: bool = False) -> str:
    style = rng.choices(list(STYLE_WEIGHTS), weights=list(STYLE_WEIGHTS.values()))[0]
    if style == "empty":
        return ""
    order = list(objects)
    rng.shuffle(order)
    # the draw happens only when partial captions are on, so recipes without them give the same captions as before
    is_partial = partial > 0 and len(order) >= 2 and rng.random() < partial
    if is_partial:
        order = order[:rng.randint(1, len(order) - 1)]
    phrases = []
    for obj in order:
        if style == "full":
            keep = dict(size=True, colour=True, position=True)
        elif style == "mixed":
            keep = {k: rng.random() < KEEP_PROBABILITY for k in ("size", "colour", "position")}
        else:  # sparse: at most one attribute besides the shape, never position
            one = rng.choice(["size", "colour", None])
            keep = dict(size=one == "size", colour=one == "colour", position=False)
        phrases.append(object_phrase(obj, **keep, fine_sizes=fine_sizes))
    text = " and ".join(phrases)
    with_bg = style == "full" or (style == "mixed" and rng.random() < KEEP_PROBABILITY)
    if with_bg and not is_partial:
        text += f" on a {background} background"
    return text
