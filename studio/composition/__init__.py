"""Composition techniques beyond the prompt language: regional prompts, per-stage prompts, concept blending.

AND/NOT composition and prompt editing live in the prompt language (:mod:`studio.prompting`), which the
engine reads for every prompt.
"""

from .blend import BLEND_LABELS, BLEND_MODES, BlendEdit
from .regions import MAX_REGIONS, REGION_MODES, Region, RegionalGuidance, check_regions, load_regions, region_masks
from .stages import (
    NUM_STAGES, STAGE_CFG, STAGE_SAMPLER, StagePrompt, StagePrompts, check_stages, load_stages, stages_of_steps,
    timeline,
)

__all__ = [
    "BLEND_LABELS", "BLEND_MODES", "MAX_REGIONS", "NUM_STAGES", "REGION_MODES", "STAGE_CFG", "STAGE_SAMPLER",
    "BlendEdit", "Region", "RegionalGuidance", "StagePrompt", "StagePrompts", "check_regions", "check_stages",
    "load_regions", "load_stages", "region_masks", "stages_of_steps", "timeline",
]
