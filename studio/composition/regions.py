"""Regional prompts: a global prompt plus boxes, each guided by its own prompt inside its feathered mask.

See :class:`RegionalGuidance` (MultiDiffusion, region-based). Crops and masks are computed at the latent
resolution of the run from the UNet's own down-sampling, so any SD-family model works.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.errors import InvalidRequest, check_text_item

MAX_REGIONS = 8
MAX_FEATHER = 0.5
REGION_MODES = ("add", "average")


@dataclass(frozen=True)
class Region:
    """A box in fractions of the image (``x0 < x1``, ``y0 < y1`` in [0, 1], origin top left) and its prompt.

    ``weight`` is the region's weight against the global prompt inside its box (1 = equal)."""

    prompt: str
    x0: float
    y0: float
    x1: float
    y1: float
    weight: float = 1.0

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "box": [self.x0, self.y0, self.x1, self.y1], "weight": self.weight}


def check_mode(mode: str) -> None:
    if mode not in REGION_MODES:
        raise InvalidRequest(f"region mode must be one of {', '.join(REGION_MODES)}, got {mode!r}", "regions")


def check_regions(regions: Sequence[Region], feather: float, mode: str = "add") -> None:
    """Raise :class:`InvalidRequest` naming the region and what is allowed."""
    check_mode(mode)
    if len(regions) > MAX_REGIONS:
        raise InvalidRequest(f"at most {MAX_REGIONS} regions, got {len(regions)}", "regions")
    if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not 0 <= feather <= MAX_FEATHER:
        raise InvalidRequest(f"feather must be a fraction of the image in [0, {MAX_FEATHER}], got {feather!r}",
                             "feather")
    for i, r in enumerate(regions):
        where = f"region {i + 1}"
        check_text_item(r, Region, where, "regions", empty="its prompt is empty; every box needs a prompt")
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
    """``(R, 1, height, width)`` masks in [0, 1]: 0 outside each box, rising linearly from 0 at each box edge inside
    the image to 1 at ``feather`` (a fraction of the image's shorter side) inside it. The ramp lies inside the box so
    that the box is all a region's crop needs (see :meth:`RegionalGuidance.crop`)."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    ramp = feather * min(height, width) / max(height, width) if feather > 0 else 0.0
    masks = []
    for r in regions:
        # signed distance to the box edge, positive inside, in fractions of each axis; an edge on the image
        # border does not fade (nothing lies beyond it)
        far = torch.full_like(xs, float("inf"))
        dx = torch.minimum(xs - r.x0 if r.x0 > 0 else far, r.x1 - xs if r.x1 < 1 else far)[None, :]
        far = torch.full_like(ys, float("inf"))
        dy = torch.minimum(ys - r.y0 if r.y0 > 0 else far, r.y1 - ys if r.y1 < 1 else far)[:, None]
        inside = torch.minimum(dx.expand(height, width), dy.expand(height, width))
        mask = (inside > 0).float() if ramp == 0 else (inside / ramp).clamp(0, 1)
        masks.append(mask[None])
    return torch.stack(masks) if masks else torch.zeros(0, 1, height, width)


class RegionalGuidance:
    """Regional prompts: each region's prompt is evaluated, with its own uncond, on the latent crop around its box
    (the box snapped out to the UNet's multiple; the feather ramp lies inside the box), so its content is drawn
    *inside* the box as a scene of its own; the global prompt's CFG prediction (from the engine's batched call)
    covers the image.
    Crops of equal size share one UNet call (uncond and region rows batched), so two half-image regions cost one
    extra call per step on half-size inputs, twice. Two ways to combine, per pixel, with ``m_k`` the feathered box
    mask and ``w_k`` the region's weight:

    * ``"add"`` (default): composable diffusion restricted to the box (Liu et al., "Compositional Visual Generation
      with Composable Diffusion Models", 2022): ``global + sum_k w_k m_k cfg (cond_k - uncond_k)``. The region adds
      its concept to what the global prompt draws there, so the scene (its background) stays one scene.
    * ``"average"``: MultiDiffusion's region-based fusion (Bar-Tal et al., "MultiDiffusion: Fusing Diffusion Paths
      for Controlled Image Generation", 2023): the weighted average of the global prediction (weight 1) and each
      region's CFG prediction (weight ``w_k m_k``). Every crop is a whole scene, so crops can disagree on shared
      content such as the background.

    On Tiny World "add" places both objects of a left/right pair far more often (``bench/composition.py``).

    ``embeds`` are the region prompts' encodings ``(R, tokens, dim)``; ``multiple`` is the latent side
    multiple the UNet needs (2 ** down-sampling levels)."""

    def __init__(self, regions: Sequence[Region], embeds: torch.Tensor, feather: float = 0.0, multiple: int = 8,
                 mode: str = "add"):
        if len(regions) != len(embeds):
            raise InvalidRequest(f"{len(regions)} regions but {len(embeds)} region encodings", "regions")
        check_mode(mode)
        self.mode = mode
        self.regions = tuple(regions)
        self.embeds = embeds
        self.feather = float(feather)
        self.multiple = int(multiple)
        self._masks: torch.Tensor | None = None

    def extra_prompts(self) -> list[str]:
        return []

    def needs_uncond(self, cfg: float) -> bool:
        return True

    def combine(self, step: int, eps: dict[str, torch.Tensor], cfg: float) -> torch.Tensor:
        raise InvalidRequest("regional prompts evaluate crops: they need an engine that calls combine_step")

    def crop(self, region: Region, height: int, width: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` in latent pixels: the box snapped out to the multiple. The feather ramp lies inside
        the box, so it adds nothing: on a small latent (Tiny World's 16x16, multiple 8) growing a half-image box by
        even one pixel would snap its crop to the whole image, and the region's object could land anywhere."""
        m = self.multiple
        y0 = max(0, math.floor(region.y0 * height / m) * m)
        y1 = min(height, math.ceil(region.y1 * height / m) * m)
        x0 = max(0, math.floor(region.x0 * width / m) * m)
        x1 = min(width, math.ceil(region.x1 * width / m) * m)
        return y0, max(y1, y0 + m), x0, max(x1, x0 + m)

    def masks(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        if self._masks is None or self._masks.shape[-2:] != (height, width):
            self._masks = region_masks(self.regions, height, width, self.feather)
        return self._masks.to(device=like.device, dtype=like.dtype)

    def combine_step(self, ctx) -> torch.Tensor:
        uncond = ctx.eps["uncond"]
        guided = uncond + ctx.cfg * (ctx.eps["cond"] - uncond)
        if not self.regions:
            return guided
        batch, _, height, width = uncond.shape
        weights = self.masks(height, width, uncond) * torch.tensor(
            [r.weight for r in self.regions], dtype=uncond.dtype, device=uncond.device)[:, None, None, None]
        total = guided.clone()
        # 1. group regions by crop size: one UNet call per group
        groups: dict[tuple[int, int], list[tuple[int, tuple]]] = {}
        for k, region in enumerate(self.regions):
            box = self.crop(region, height, width)
            groups.setdefault((box[1] - box[0], box[3] - box[2]), []).append((k, box))
        for members in groups.values():
            x = torch.cat([ctx.model_input[..., y0:y1, x0:x1] for _, (y0, y1, x0, x1) in members])
            e_u = ctx.embeds["uncond"].repeat(len(members), 1, 1)
            e_r = torch.cat([self.embeds[k:k + 1].to(e_u).expand(batch, -1, -1) for k, _ in members])
            out_u, out_r = ctx.denoise(torch.cat([x, x]), torch.cat([e_u, e_r])).chunk(2)
            # 2. each region's guidance (add) or CFG prediction (average) in its crop, weighted by its mask
            for j, (k, (y0, y1, x0, x1)) in enumerate(members):
                u_k, r_k = out_u[j * batch:(j + 1) * batch], out_r[j * batch:(j + 1) * batch]
                w = weights[k, :, y0:y1, x0:x1]
                if self.mode == "add":
                    total[..., y0:y1, x0:x1] += w * ctx.cfg * (r_k - u_k)
                else:
                    total[..., y0:y1, x0:x1] += w * (u_k + ctx.cfg * (r_k - u_k))
        return total if self.mode == "add" else total / (1 + weights.sum(0))


def load_regions(path: str | Path) -> tuple[tuple[Region, ...], float, str | None, str]:
    """Read a regions file (schema in the README): ``{"feather": 0.05, "prompt": optional global prompt,
    "mode": "add" | "average" (optional, default "add"),
    "regions": [{"prompt": "...", "box": [x0, y0, x1, y1], "weight": 1.0}, ...]}``; returns
    ``(regions, feather, prompt, mode)``."""
    data = _read_json(path, "regions")
    if not isinstance(data, dict) or not isinstance(data.get("regions"), list):
        raise InvalidRequest(f"{path}: expected an object with a \"regions\" list", "regions")
    unknown = sorted(set(data) - {"regions", "feather", "prompt", "mode"})
    if unknown:
        raise InvalidRequest(f"{path}: unknown keys {unknown}; allowed: regions, feather, prompt, mode", "regions")
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
    mode = data.get("mode", "add")
    check_regions(regions, feather, mode)
    return tuple(regions), float(feather), prompt, mode


def _read_json(path: str | Path, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"{what} file not found: {path}", what) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidRequest(f"{what} file {path} is not valid JSON: {e}", what) from None
