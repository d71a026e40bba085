"""Inspection techniques (no UI): cross-attention capture so far; see :mod:`studio.inspection.attention`."""

from .attention import CrossAttentionRecorder

__all__ = ["CrossAttentionRecorder"]
