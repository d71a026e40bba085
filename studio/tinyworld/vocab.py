"""The Tiny World vocabulary: every word a caption can contain, and the exact values behind it.

These tables are the single source of truth for the scene generator, the caption grammar, the analyzer
and the tokenizer, so that what we draw, say and measure can never drift apart.
"""

CANVAS = 64
SUPERSAMPLE = 4  # draw at 4x, then downsample: anti-aliased edges

BACKGROUNDS = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}

PALETTE = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 210, 40),
    "green": (50, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
}

# Colours between two palette neighbours on the colour wheel, for captions only (recipes with
# ``continuous_colours``): an object drawn with a colour on the way from one palette colour to the next is called
# by the nearest of these twelve words, so the model learns hue as a near-continuum and a hue slider has colours
# between "blue" and "purple" to land on. The analyzer keeps naming the six palette colours.
COLOUR_CYCLE = ("red", "orange", "yellow", "green", "blue", "purple")
BETWEEN_COLOURS = {"vermilion": ("red", "orange"), "amber": ("orange", "yellow"), "lime": ("yellow", "green"),
                   "teal": ("green", "blue"), "indigo": ("blue", "purple"), "magenta": ("purple", "red")}


def cycle_colour(u: float) -> tuple[tuple[int, int, int], str]:
    """The colour at ``u`` in [0, 6) along COLOUR_CYCLE (RGB blend of the two palette neighbours) and the caption
    word for it: the palette colour in the outer quarters of a step, the BETWEEN_COLOURS word in its middle half."""
    k, f = int(u) % 6, u - int(u)
    a, b = COLOUR_CYCLE[k], COLOUR_CYCLE[(k + 1) % 6]
    rgb = tuple(int(round((1 - f) * ca + f * cb)) for ca, cb in zip(PALETTE[a], PALETTE[b]))
    if f < 0.25:
        word = a
    elif f > 0.75:
        word = b
    else:
        word = next(w for w, pair in BETWEEN_COLOURS.items() if pair == (a, b))
    return rgb, word


TRAIN_SHAPES = ("circle", "square", "triangle")
HELD_OUT_SHAPES = ("ring", "star")  # drawable, never in the training set (kept for personalization)
# "hollow" squares and triangles (a hole of half the radius, as a ring has; stage 10 candidate): the model sees holes
# on other shapes, never a hollow circle, which is the held-out ring
HOLLOW_WORD = "hollow"
HOLLOW_SHAPES = ("square", "triangle")
ALL_SHAPES = TRAIN_SHAPES + HELD_OUT_SHAPES

SIZES = {"tiny": 5.0, "small": 8.0, "medium": 11.0, "large": 15.0, "huge": 19.0}
SIZE_JITTER = 0.08  # +-8% around the nominal radius

# Finer size words for captions only (recipes with ``fine_sizes``): the five sizes above plus one word halfway
# between each pair, so a caption's size word pins the radius to +-0.75..1 px instead of +-1.5..2 px. The generator
# and the analyzer keep the five SIZES; these words only make the text say more precisely what was drawn, so that
# the model learns size as a near-continuum (a size slider then has captioned sizes between its five words).
# "big" sits between "large" and "huge" by Tiny World's convention.
CAPTION_SIZES = {"tiny": 5.0, "little": 6.5, "small": 8.0, "smallish": 9.5, "medium": 11.0, "largish": 13.0,
                 "large": 15.0, "big": 17.0, "huge": 19.0}

COLUMNS = ("left", "center", "right")
ROWS = ("top", "middle", "bottom")

STAR_INNER_RATIO = 0.45

FUNCTION_WORDS = ("a", "an", "and", "on", "at", "in", "the", "background")


def position_phrase(column: str, row: str) -> str:
    """Position words from the canvas thirds: "at the top left", "on the left", "at the bottom", "in the center"."""
    if column == "center" and row == "middle":
        return "in the center"
    if row == "middle":
        return f"on the {column}"
    if column == "center":
        return f"at the {row}"
    return f"at the {row} {column}"


def position_cell(cx: float, cy: float, canvas: float = CANVAS) -> tuple[str, str]:
    """(column, row) words of a centre point, from thirds of the canvas."""
    col = COLUMNS[min(2, max(0, int(cx * 3 // canvas)))]
    row = ROWS[min(2, max(0, int(cy * 3 // canvas)))]
    return col, row


def size_word(radius: float) -> str:
    """Nearest size word for a radius (in 64-px canvas units)."""
    return min(SIZES, key=lambda w: abs(SIZES[w] - radius))


def caption_size_word(radius: float) -> str:
    """Nearest of the finer caption size words (CAPTION_SIZES) for a radius."""
    return min(CAPTION_SIZES, key=lambda w: abs(CAPTION_SIZES[w] - radius))


def known_colour_words(tokenizer) -> list[str]:
    """The colour words a model's tokenizer has as one token, in wheel order: the six palette colours, with the
    BETWEEN_COLOURS words between them for weights trained with continuous colours (stage 9 on)."""
    words = []
    for colour in COLOUR_CYCLE:
        words.append(colour)
        between = next(w for w, pair in BETWEEN_COLOURS.items() if pair[0] == colour)
        words.append(between)
    return [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) == 1]


def known_size_words(tokenizer) -> list[str]:
    """The caption size words a model's tokenizer has as one token, smallest first: the five SIZES for weights
    trained without fine sizes, all nine CAPTION_SIZES for those trained with them."""
    return [w for w in CAPTION_SIZES if len(tokenizer(w, add_special_tokens=False).input_ids) == 1]


def all_words() -> list[str]:
    """Every word that Tiny World captions (and held-out shape names) use; each is one token."""
    words = list(FUNCTION_WORDS) + list(BACKGROUNDS) + list(PALETTE) + list(ALL_SHAPES) + list(SIZES)
    words += list(CAPTION_SIZES) + list(BETWEEN_COLOURS) + [HOLLOW_WORD]
    words += list(COLUMNS) + list(ROWS)
    seen: list[str] = []
    for w in words:
        if w not in seen:
            seen.append(w)
    return seen
