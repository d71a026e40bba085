"""Pictures of inspection data: heat maps as colour images, overlays, and real plots (matplotlib, Agg backend;
axes, labels, legends) rendered to PIL images for the UI and to PNG files for export."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

HEAT_CMAP = "inferno"
SIGNED_CMAP = "RdBu_r"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a constant map becomes zeros)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    return np.zeros_like(v) if hi - lo < 1e-12 else (v - lo) / (hi - lo)


def heat_image(values: np.ndarray, *, cmap: str = HEAT_CMAP, signed: bool = False,
               size: tuple[int, int] | None = None) -> Image.Image:
    """A 2-D map as an RGB image (min-max normalised; ``signed`` centres zero on a diverging map)."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64)
    if signed:
        bound = max(float(np.abs(v).max()), 1e-12)
        scaled, cmap = (v / bound + 1) / 2, SIGNED_CMAP if cmap == HEAT_CMAP else cmap
    else:
        scaled = normalise(v)
    rgb = (matplotlib.colormaps[cmap](scaled)[..., :3] * 255).round().astype(np.uint8)
    image = Image.fromarray(rgb)
    return image.resize(size, Image.NEAREST) if size and image.size != size else image


def overlay(image: Image.Image, values: np.ndarray, opacity: float = 0.6, *, cmap: str = HEAT_CMAP) -> Image.Image:
    """``values`` as a heat map blended over ``image`` (``opacity`` 0 = image only, 1 = map only)."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in 0..1, got {opacity}")
    base = image.convert("RGB")
    heat = heat_image(values, cmap=cmap)
    if heat.size != base.size:
        heat = heat.resize(base.size, Image.BILINEAR)
    return Image.blend(base, heat, opacity)


def _to_image(fig) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def line_plot(x: Sequence[float], series: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str, title: str,
              markers: Mapping[str, float] | None = None, hline: float | None = None,
              size: tuple[float, float] = (5.0, 3.0)) -> Image.Image:
    """Lines of ``series`` over ``x``; ``markers`` draws labelled vertical lines (e.g. where guidance would stop),
    ``hline`` a dashed horizontal reference."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    for label, ys in series.items():
        ax.plot(list(x)[:len(ys)], list(ys), marker=".", label=label)
    for label, at in (markers or {}).items():
        ax.axvline(at, color="gray", linestyle=":", linewidth=1.2)
        ax.annotate(label, (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90, va="top",
                    ha="right")
    if hline is not None:
        ax.axhline(hline, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1 or markers:
        ax.legend(fontsize=7)
    return _to_image(fig)


def scatter_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str, ylabel: str,
                 title: str, size: tuple[float, float] = (5.0, 3.0)) -> Image.Image:
    """Points per series (e.g. each candidate's error per timestep), with a legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    for label, (xs, ys) in series.items():
        order = np.argsort(np.asarray(xs))
        ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], marker="o", markersize=3, linewidth=0.8, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _to_image(fig)


def map_figure(values: np.ndarray, *, title: str, label: str, signed: bool = False,
               image: Image.Image | None = None) -> Image.Image:
    """A map with axes (pixels) and a colour bar, optionally beside the image it explains."""
    plt = _pyplot()
    cols = 2 if image is not None else 1
    fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols + 0.6, 3.0), squeeze=False)
    if image is not None:
        axes[0, 0].imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
        axes[0, 0].set_title("image", fontsize=9)
    ax = axes[0, -1]
    v = np.asarray(values, dtype=np.float64)
    kwargs = {"cmap": SIGNED_CMAP, "vmin": -np.abs(v).max(), "vmax": np.abs(v).max()} if signed else {"cmap": HEAT_CMAP}
    shown = ax.imshow(v, interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize=9)
    for a in axes[0]:
        a.set_xlabel("x (px)", fontsize=8)
        a.set_ylabel("y (px)", fontsize=8)
    fig.colorbar(shown, ax=ax, label=label, fraction=0.046, pad=0.04)
    return _to_image(fig)
