"""A real CLIP byte-level BPE tokenizer in which every Tiny World word is one token.

We learn BPE merges over the vocabulary words only (most frequent pair first, ties broken alphabetically, until
each word is a single symbol). The base vocabulary holds every byte symbol with and without the end-of-word
marker, so any other word still tokenizes, into sub-word or character tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .vocab import all_words

MAX_LENGTH = 48  # longest training caption is 32 tokens with start/end; leave room for user prompts
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable unicode character table (the standard reversible mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that turn each word (as characters, last one with '</w>') into one symbol."""
    segmented = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in segmented.values()):
        pairs = Counter()
        for symbols in segmented.values():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += 1
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, symbols in segmented.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            segmented[w] = tuple(out)
    return merges


def write_tokenizer_files(out_dir: str | Path, extra_words: list[str] | None = None) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs of a CLIPTokenizer into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = all_words() + list(extra_words or [])
    merges = learn_merges(words)
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def load_tokenizer(path: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))
