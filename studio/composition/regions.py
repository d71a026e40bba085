"""Regional prompts: a global prompt plus boxes, each guided by its own prompt inside its feathered mask.

Each region's prompt is one more conditioning in the step's batched UNet call; the region's CFG-guided
prediction replaces the global one inside its mask (latent-space masking of the guided predictions, as in
"latent couple" / MultiDiffusion-style regional guidance). Masks are built at the latent resolution of the run,
so any SD-family model works.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.errors import InvalidRequest

MAX_REGIONS = 8
MAX_FEATHER = 0.5


@dataclass(frozen=True)
class Region:
    """A box in fractions of the image (``x0 < x1``, ``y0 < y1`` in [0, 1], origin top left) and its prompt.

    ``weight`` scales the region's guidance (1 = the run's CFG scale)."""

    prompt: str
    x0: float
    y0: float
    x1: float
    y1: float
    weight: float = 1.0

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "box": [self.x0, self.y0, self.x1, self.y1], "weight": self.weight}


def check_regions(regions: Sequence[Region], feather: float) -> None:
    """Raise :class:`InvalidRequest` naming the region and what is allowed."""
    if len(regions) > MAX_REGIONS:
        raise InvalidRequest(f"at most {MAX_REGIONS} regions, got {len(regions)}", "regions")
    if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not 0 <= feather <= MAX_FEATHER:
        raise InvalidRequest(f"feather must be a fraction of the image in [0, {MAX_FEATHER}], got {feather!r}",
                             "feather")
    for i, r in enumerate(regions):
        where = f"region {i + 1}"
        if not isinstance(r, Region):
            raise InvalidRequest(f"{where}: expected a Region, got {type(r).__name__}", "regions")
        if not isinstance(r.prompt, str) or not r.prompt.strip():
            raise InvalidRequest(f"{where}: its prompt is empty; every box needs a prompt", "regions")
        box = (r.x0, r.y0, r.x1, r.y1)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            raise InvalidRequest(f"{where}: box must be four numbers, got {box!r}", "regions")
        if not (0 <= r.x0 < r.x1 <= 1 and 0 <= r.y0 < r.y1 <= 1):
            raise InvalidRequest(f"{where}: box {box} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                                 "(fractions of the image, origin top left)", "regions")
        w = r.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 0 < w <= 5:
            raise InvalidRequest(f"{where}: weight must be in (0, 5], got {w!r}", "regions")


def region_masks(regions: Sequence[Region], height: int, width: int, feather: float = 0.0) -> torch.Tensor:
    """``(R, 1, height, width)`` masks in [0, 1]: 1 inside each box, 0 outside, and a linear ramp of total width
    ``feather`` (a fraction of the image's shorter side) centred on the box edge."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    ramp = feather * min(height, width) / max(height, width) if feather > 0 else 0.0
    masks = []
    for r in regions:
        # signed distance to the box edge, positive inside, in fractions of each axis
        dx = torch.minimum(xs - r.x0, r.x1 - xs)[None, :]
        dy = torch.minimum(ys - r.y0, r.y1 - ys)[:, None]
        inside = torch.minimum(dx.expand(height, width), dy.expand(height, width))
        mask = (inside > 0).float() if ramp == 0 else (inside / ramp + 0.5).clamp(0, 1)
        masks.append(mask[None])
    return torch.stack(masks) if masks else torch.zeros(0, 1, height, width)


class RegionalGuidance:
    """Guidance combiner for regional prompts.

    ``global = u + cfg (c - u)``; region k: ``g_k = u + cfg w_k (e_k - u)``; the result is
    ``(1 - min(1, S)) global + sum_k m_k / max(1, S) g_k`` with ``S = sum_k m_k`` (overlapping boxes share)."""

    def __init__(self, regions: Sequence[Region], feather: float = 0.0):
        self.regions = tuple(regions)
        self.feather = float(feather)
        self._masks: torch.Tensor | None = None

    def extra_prompts(self) -> list[str]:
        return [r.prompt for r in self.regions]

    def needs_uncond(self, cfg: float) -> bool:
        return True

    def masks(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        if self._masks is None or self._masks.shape[-2:] != (height, width):
            self._masks = region_masks(self.regions, height, width, self.feather)
        return self._masks.to(device=like.device, dtype=like.dtype)

    def combine(self, step: int, eps: dict[str, torch.Tensor], cfg: float) -> torch.Tensor:
        uncond = eps["uncond"]
        guided = uncond + cfg * (eps["cond"] - uncond)
        if not self.regions:
            return guided
        masks = self.masks(*uncond.shape[-2:], like=uncond)  # (R, 1, h, w)
        total = masks.sum(0)
        out = guided * (1 - total.clamp(max=1))
        share = masks / total.clamp(min=1)
        for k, region in enumerate(self.regions):
            g_k = uncond + cfg * region.weight * (eps[f"extra:{k}"] - uncond)
            out = out + share[k] * g_k
        return out


def load_regions(path: str | Path) -> tuple[tuple[Region, ...], float, str | None]:
    """Read a regions file (schema in the README): ``{"feather": 0.05, "prompt": optional global prompt,
    "regions": [{"prompt": "...", "box": [x0, y0, x1, y1], "weight": 1.0}, ...]}``."""
    data = _read_json(path, "regions")
    if not isinstance(data, dict) or not isinstance(data.get("regions"), list):
        raise InvalidRequest(f"{path}: expected an object with a \"regions\" list", "regions")
    unknown = sorted(set(data) - {"regions", "feather", "prompt"})
    if unknown:
        raise InvalidRequest(f"{path}: unknown keys {unknown}; allowed: regions, feather, prompt", "regions")
    regions = []
    for i, item in enumerate(data["regions"]):
        if not isinstance(item, dict) or set(item) - {"prompt", "box", "weight"} or "box" not in item:
            raise InvalidRequest(f"{path}: region {i + 1} must be {{\"prompt\": ..., \"box\": [x0, y0, x1, y1], "
                                 f"\"weight\": optional}}, got {item!r}", "regions")
        box = item["box"]
        if not isinstance(box, list) or len(box) != 4:
            raise InvalidRequest(f"{path}: region {i + 1}: box must be [x0, y0, x1, y1], got {box!r}", "regions")
        regions.append(Region(item.get("prompt", ""), *box, weight=item.get("weight", 1.0)))
    feather = data.get("feather", 0.05)
    prompt = data.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidRequest(f"{path}: prompt must be a string", "regions")
    check_regions(regions, feather)
    return tuple(regions), float(feather), prompt


def _read_json(path: str | Path, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"{what} file not found: {path}", what) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequest(f"{what} file {path} is not valid JSON: {e}", what) from None
