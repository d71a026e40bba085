"""Inspection techniques (no UI): cross-attention capture (:mod:`.attention`), the per-step record and guidance
curves (:mod:`.trajectory`), the diffusion classifier (:mod:`.classifier`), token information maps
(:mod:`.information`) and their figures (:mod:`.figures`). The workbench's controller is
:mod:`studio.controllers.inspect`."""

from .attention import CrossAttentionRecorder, ProbabilityProcessor

__all__ = ["CrossAttentionRecorder", "ProbabilityProcessor"]
