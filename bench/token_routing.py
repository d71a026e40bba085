"""Where Tiny World's UNet reads an attribute from: swap the text encoder's output at chosen token positions.

A subject slider adds its delta at the subject word's tokens only, so it can move an attribute only as far as the
UNet reads that attribute there. This bench finds out where it does: for a prompt saying attribute value A
("a medium blue circle on a black background") it encodes the same prompt with value B ("... purple circle ...")
and puts B's encoding into A's at one group of positions at a time, then asks the analyzer whether the image shows
B. Groups (positions in A's token sequence):

  noun          the subject word ("circle"), the place subject sliders act on
  word          the attribute word itself ("blue")
  word+noun     both
  after noun    the words after the noun (not the end token)
  end+pad       the end token and the padding
  after word    everything after the attribute word (noun, later words, end, padding)
  all           every position (the ceiling: B's whole encoding)

Also "noun xK": B's difference at the noun scaled K times (what a slider of scale K reaches with the phrase
direction). A row per swap "A -> B", a column per group: the share of images that show B (colour: the analyzer's
nearest palette colour; size: the measured radius nearer B's radius than A's).

    python bench/token_routing.py [--model assets/tinyworld] [--seeds 8] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._common import machine, print_table, write_results  # noqa: E402
from studio.attributes.directions import ReplaceCondEmbeddings, encode_cond, subject_token_indices  # noqa: E402
from studio.engine import Engine, GenerationRequest, RunHooks  # noqa: E402
from studio.models import load_model  # noqa: E402
from studio.tinyworld.analyzer import analyze  # noqa: E402
from studio.tinyworld.vocab import SIZES  # noqa: E402

SWAPS = [("colour", "blue", "purple"), ("colour", "red", "yellow"), ("size", "medium", "huge")]
FORMS = ["a {size} {colour} circle", "a {size} {colour} circle on a {bg} background",
         "a {size} {colour} circle at the top left on a {bg} background"]
SCALES = (2, 4, 8)


def groups(tokenizer, prompt: str, word: str, seq: int) -> dict[str, list[int]]:
    noun = list(subject_token_indices(tokenizer, prompt, "circle"))
    attr = list(subject_token_indices(tokenizer, prompt, word))
    end = len(tokenizer(prompt).input_ids) - 1  # position of the end token
    return {"noun": noun, "word": attr, "word+noun": attr + noun, "after noun": list(range(noun[-1] + 1, end)),
            "end+pad": list(range(end, seq)), "after word": list(range(attr[-1] + 1, seq)), "all": list(range(seq))}


def shows(analysis, kind: str, a: str, b: str) -> bool:
    objects = sorted(analysis.objects, key=lambda o: -o.area)
    if not objects:
        return False
    main = objects[0]
    if kind == "colour":
        return main.colour == b
    return abs(main.radius - SIZES[b]) < abs(main.radius - SIZES[a])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/tinyworld")
    p.add_argument("--seeds", type=int, default=8, help="seeds per prompt form")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    engine = Engine(model)
    t0 = time.time()
    rows, table = {}, []
    for kind, a, b in SWAPS:
        counts: dict[str, list[bool]] = {}
        for form_index, form in enumerate(FORMS):
            for seed in range(args.seeds):
                bg = ("black", "white", "gray")[seed % 3]
                fill = {"size": "medium", "colour": "blue", "bg": bg}
                fill["size" if kind == "size" else "colour"] = a
                prompt_a = form.format(**fill)
                prompt_b = prompt_a.replace(f" {a} ", f" {b} ")
                enc_a, enc_b = encode_cond(model, [prompt_a]), encode_cond(model, [prompt_b])
                variants = groups(model.tokenizer, prompt_a, a, enc_a.shape[1])
                noun = variants["noun"]
                edits = {name: (idx, 1.0) for name, idx in variants.items()}
                edits.update({f"noun x{k}": (noun, float(k)) for k in SCALES})
                for name, (idx, scale) in edits.items():
                    enc = enc_a.clone()
                    enc[:, idx] = enc_a[:, idx] + scale * (enc_b[:, idx] - enc_a[:, idx])
                    image = engine.generate(
                        GenerationRequest(prompt=prompt_a, seed=1000 * form_index + seed, cfg=args.cfg,
                                          steps=args.steps),
                        hooks=RunHooks(embedding_edits=[ReplaceCondEmbeddings(enc)])).images[0]
                    counts.setdefault(name, []).append(shows(analyze(image), kind, a, b))
        shares = {name: sum(v) / len(v) for name, v in counts.items()}
        rows[f"{a} -> {b}"] = {"kind": kind, "images": len(counts["all"]), "shows_b": shares}
        table.append([f"{a} -> {b}"] + [shares[n] for n in counts])
        headers = ["swap"] + list(counts)
    print_table(headers, table)
    path = write_results("token-routing", {"machine": machine(model.device), "model": args.model,
                                           "weights_hash": model.weights_hash, "seeds_per_form": args.seeds,
                                           "forms": FORMS, "cfg": args.cfg, "steps": args.steps, "rows": rows,
                                           "seconds": round(time.time() - t0, 1)}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
