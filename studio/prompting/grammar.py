"""The prompt language: one grammar, parsed by hand, with errors that point at a column.

    prompt    := part ("AND" part)*                 AND: composable diffusion (Liu et al. 2022)
    part      := ["NOT"] sequence [":" number]       a weight for the part; NOT (or a negative weight) subtracts
    sequence  := (text | emphasis | bracket)*
    emphasis  := "(" sequence [":" number] ")"        A1111 emphasis; "(x)" is x1.1, "(x:1.3)" is x1.3
    bracket   := "[" sequence "]"                     de-emphasis, x1/1.1
               | "[" sequence ":" sequence ":" when "]"  prompt editing: from -> to at ``when``
               | "[" sequence ":" when "]"               add ``to`` at ``when``
               | "[" sequence "::" when "]"              remove ``from`` at ``when``
               | "[" sequence ("|" sequence)+ "]"        alternation, one option per step in turn
    when      := a fraction of the steps (0 < when < 1) or a step number (integer >= 1)

``AND`` and ``NOT`` are keywords only in capitals and between spaces. A part's weight is ``:number`` at its very
end after a non-digit (``a red circle :1.2``; ``16:9`` stays text). ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\:``
``\\|`` and ``\\\\`` are literal characters. A prompt without any of these constructs parses to a single part of
weight 1 whose only node is its own text, unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studio.errors import InvalidRequest

SPECIAL = "()[]:|\\"
EMPHASIS = 1.1
_AND = re.compile(r"(?:(?<=\s)|^)AND(?=\s|$)")
_NOT = re.compile(r"^\s*NOT\s+")
_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*$")


class PromptSyntaxError(InvalidRequest):
    """A prompt that doesn't parse. ``column`` is 1-based in the text as typed."""

    def __init__(self, message: str, text: str, column: int, field: str | None = "prompt"):
        near = text[column - 1:column + 24]
        super().__init__(f"prompt syntax error at column {column} (at {near!r}): {message}", field)
        self.column = column
        self.reason = message
        self.pointer = f"{text}\n{' ' * (column - 1)}^"  # for displays that keep line breaks


# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Weighted:
    """``(...)``, ``(...:w)`` or ``[...]``: the children's token embeddings scaled by ``weight``."""

    children: tuple
    weight: float


@dataclass(frozen=True)
class Edit:
    """``[before:after:when]``: ``before`` until the switch, ``after`` from it on."""

    before: tuple
    after: tuple
    when: float  # < 1: fraction of the steps; >= 1: step number

    def switch_step(self, num_steps: int) -> int:
        """First step (0-based) that uses ``after``."""
        if self.when < 1:
            return int(round(self.when * num_steps))
        return int(self.when)


@dataclass(frozen=True)
class Alternate:
    """``[a|b|...]``: option ``step % n`` at each step."""

    options: tuple


@dataclass(frozen=True)
class Part:
    """One AND part: its nodes and weight (negative for NOT)."""

    nodes: tuple
    weight: float = 1.0
    text: str = ""  # the part as typed, for labels


@dataclass(frozen=True)
class ParsedPrompt:
    parts: tuple

    @property
    def is_composed(self) -> bool:
        return len(self.parts) > 1 or self.parts[0].weight != 1.0

    @property
    def is_plain(self) -> bool:
        """True when the prompt used none of the language: it means its text, as before."""
        return not self.is_composed and all(isinstance(n, Text) for n in self.parts[0].nodes)


# --------------------------------------------------------------------------- parsing


def parse(text: str, *, field: str | None = "prompt", allow_and: bool = True) -> ParsedPrompt:
    """Parse ``text``; raise :class:`PromptSyntaxError` (an ``InvalidRequest``) pointing at the problem."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{field or 'prompt'} must be text, got {type(text).__name__}", field)
    parts = []
    for start, end in _split_and(text):
        if not allow_and and (start, end) != (0, len(text)):
            raise PromptSyntaxError("AND is not allowed here (a negative prompt is one prompt; use NOT or a "
                                    "negative weight in the prompt to subtract a concept)", text, end + 2, field)
        parts.append(_parse_part(text, start, end, field))
    return ParsedPrompt(tuple(parts))


def _split_and(text: str) -> list[tuple[int, int]]:
    """Spans of the AND parts, ignoring AND inside brackets or escaped."""
    spans, start = [], 0
    for m in _AND.finditer(text):
        if _depth_at(text, m.start()) == 0:
            spans.append((start, m.start()))
            start = m.end()
    spans.append((start, len(text)))
    return spans


def _depth_at(text: str, pos: int) -> int:
    depth, i = 0, 0
    while i < pos:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        i += 1
    return depth


def _parse_part(text: str, start: int, end: int, field) -> Part:
    chunk = text[start:end]
    weight = 1.0
    m = _NOT.match(chunk)
    if m:
        weight, start = -1.0, start + m.end()
        chunk = text[start:end]
    colon = _weight_colon(chunk)
    if colon is not None:
        weight *= float(chunk[colon + 1:])
        end = start + colon
    composed = len(_split_and(text)) > 1 or weight != 1.0
    if composed:  # a part is its words; the spaces around AND belong to no part
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
    if composed and start == end:
        raise PromptSyntaxError("an AND part is empty; write a prompt on both sides of AND", text, start + 1, field)
    nodes, pos = _Parser(text, field).sequence(start, end, closers="")
    return Part(nodes=nodes, weight=weight, text=text[start:end].strip())


def _weight_colon(chunk: str) -> int | None:
    """Position of the ``:`` of a trailing part weight (``a circle :1.2``), or None."""
    colon = chunk.rfind(":")
    if colon <= 0 or _escaped(chunk, colon) or _depth_at(chunk, colon) != 0:
        return None
    if not _NUMBER.fullmatch(chunk[colon + 1:]):
        return None
    before = chunk[:colon].rstrip()
    if not before or before[-1].isdigit() or before[-1] == "\\":
        return None  # "16:9" is text
    return colon


def _escaped(chunk: str, pos: int) -> bool:
    n, i = 0, pos - 1
    while i >= 0 and chunk[i] == "\\":
        n, i = n + 1, i - 1
    return n % 2 == 1


class _Parser:
    def __init__(self, text: str, field):
        self.text, self.field = text, field

    def error(self, message: str, pos: int):
        return PromptSyntaxError(message, self.text, pos + 1, self.field)

    def sequence(self, pos: int, end: int, closers: str) -> tuple[tuple, int]:
        """Nodes from ``pos`` up to ``end`` or the first unescaped character of ``closers`` (not consumed)."""
        nodes: list = []
        buf: list[str] = []

        def flush():
            if buf:
                nodes.append(Text("".join(buf)))
                buf.clear()

        while pos < end:
            c = self.text[pos]
            if c == "\\":
                if pos + 1 >= end:
                    raise self.error("a backslash must escape one of ( ) [ ] : | \\", pos)
                buf.append(self.text[pos + 1])
                pos += 2
            elif c in closers:
                break
            elif c == "(":
                flush()
                node, pos = self.emphasis(pos, end)
                nodes.append(node)
            elif c == "[":
                flush()
                node, pos = self.bracket(pos, end)
                nodes.append(node)
            elif c in ")]":
                raise self.error(f"'{c}' closes nothing; escape it as '\\{c}' to write it", pos)
            elif c == "|" and "|" not in closers:
                raise self.error("'|' only separates options inside [a|b]; escape it as '\\|' to write it", pos)
            else:
                buf.append(c)
                pos += 1
        flush()
        return tuple(nodes), pos

    def emphasis(self, open_pos: int, end: int) -> tuple[Weighted, int]:
        children, pos = self.sequence(open_pos + 1, end, closers=":)")
        weight = EMPHASIS
        if pos < end and self.text[pos] == ":":
            close = self._find_close(pos + 1, end, ")", open_pos)
            weight = self.number(pos + 1, close, "an emphasis weight like (word:1.3)")
            pos = close
        if pos >= end or self.text[pos] != ")":
            raise self.error("'(' is never closed; add ')' or escape it as '\\('", open_pos)
        return Weighted(children, weight), pos + 1

    def bracket(self, open_pos: int, end: int):
        first, pos = self.sequence(open_pos + 1, end, closers=":|]")
        if pos >= end:
            raise self.error("'[' is never closed; add ']' or escape it as '\\['", open_pos)
        c = self.text[pos]
        if c == "]":
            return Weighted(first, 1 / EMPHASIS), pos + 1
        if c == "|":
            options = [first]
            while pos < end and self.text[pos] == "|":
                option, pos = self.sequence(pos + 1, end, closers="|]")
                options.append(option)
            if pos >= end:
                raise self.error("'[' of an alternation is never closed; add ']'", open_pos)
            return Alternate(tuple(options)), pos + 1
        # c == ":" -> prompt editing
        second_start = pos + 1
        second, pos = self.sequence(second_start, end, closers=":]")
        if pos >= end:
            raise self.error("'[' of a prompt edit is never closed; write [from:to:when]", open_pos)
        if self.text[pos] == "]":  # [to:when]
            when = self.when(second_start, pos)
            return Edit((), first, when), pos + 1
        close = self._find_close(pos + 1, end, "]", open_pos)
        when = self.when(pos + 1, close)
        return Edit(first, second, when), close + 1

    def when(self, start: int, stop: int) -> float:
        value = self.number(start, stop, "when: a fraction of the steps (0.5) or a step number (12)")
        if value <= 0:
            raise self.error(f"when must be > 0 (a fraction like 0.5 or a step number like 12), got {value:g}",
                             start)
        if value >= 1 and value != int(value):
            raise self.error(f"when >= 1 is a step number and must be whole, got {value:g}", start)
        return value

    def number(self, start: int, stop: int, what: str) -> float:
        raw = self.text[start:stop]
        if not _NUMBER.fullmatch(raw):
            raise self.error(f"expected {what}, got {raw.strip()!r}", start)
        return float(raw)

    def _find_close(self, pos: int, end: int, closer: str, open_pos: int) -> int:
        i = pos
        while i < end and self.text[i] not in closer + "([":
            i += 1
        if i >= end or self.text[i] != closer:
            raise self.error(f"'{self.text[open_pos]}' is never closed; add '{closer}'", open_pos)
        return i
