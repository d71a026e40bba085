"""From a parsed prompt to what the text encoder sees at each step.

A step's prompt is a tuple of ``(text, weight)`` chunks (:data:`Chunks`); adjacent chunks of equal weight are
merged, so a prompt without emphasis is one chunk of weight 1, encoded exactly as its plain text.
"""

from __future__ import annotations

from .grammar import Alternate, Edit, Part, Text, Weighted

Chunks = tuple[tuple[str, float], ...]


def chunks_at(part: Part, step: int, num_steps: int) -> Chunks:
    """The chunks of ``part`` at ``step`` (0-based) of ``num_steps``."""
    out: list[tuple[str, float]] = []
    _resolve(part.nodes, step, num_steps, 1.0, out)
    merged: list[tuple[str, float]] = []
    for text, weight in out:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    return tuple(merged) or (("", 1.0),)


def schedule(part: Part, num_steps: int) -> tuple[Chunks, ...]:
    """The chunks of ``part`` at every step."""
    return tuple(chunks_at(part, i, num_steps) for i in range(num_steps))


def plain_text(chunks: Chunks) -> str:
    """What the chunks read as, weights dropped."""
    return "".join(text for text, _ in chunks)


def is_unweighted(chunks: Chunks) -> bool:
    return all(weight == 1.0 for _, weight in chunks)


def _resolve(nodes, step: int, num_steps: int, weight: float, out: list) -> None:
    for node in nodes:
        if isinstance(node, Text):
            out.append((node.text, weight))
        elif isinstance(node, Weighted):
            _resolve(node.children, step, num_steps, weight * node.weight, out)
        elif isinstance(node, Edit):
            branch = node.after if step >= node.switch_step(num_steps) else node.before
            _resolve(branch, step, num_steps, weight, out)
        elif isinstance(node, Alternate):
            _resolve(node.options[step % len(node.options)], step, num_steps, weight, out)
        else:  # pragma: no cover - the grammar makes no other nodes
            raise TypeError(f"unknown prompt node {node!r}")
