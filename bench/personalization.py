"""Personalization on Tiny World with the held-out shapes (never in its training data), judged by the analyzer.

For each shape (ring, star): 8 drawn scenes of it, in two colours (red, blue), sizes medium/large/huge, random
places and backgrounds. Each method learns token <ring> (or <star>) from them, initialised from "circle" (or
"triangle"), and is timed. Then, over --seeds seeds (batches of 8, DPM++ 2M, 20 steps, CFG 3):

  "a green <tok>"                  the learned shape (exactly one object of that shape), and green
  "a large <tok> at the top left"  the shape, and size word "large" with position "at the top left"
  "a red circle" (LoRA only)       still a circle (drift of the shared words)

methods: textual-inversion (--vectors vectors per token, default one), prospect (ten per-stage vectors, all stages to the concept), lora
(rank --rank on the attention projections, with the token, prior preservation on 8 renders of the init word),
lora-resnets (the same, also on the 3x3 convolutions of every ResNet block).

    python bench/personalization.py [--shapes ring,star] [--methods textual-inversion,prospect,lora] [--seeds 64]
                                     [--augment none|mirror|mirror+flip] [--colour-keep 0.75]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench._common import machine, print_table, write_results  # noqa: E402
from studio.controllers.personalize import (  # noqa: E402
    ConceptUse, PersonalizationController, PersonalizedRequest, TrainConceptRequest,
)
from studio.engine import Engine, GenerationRequest  # noqa: E402
from studio.models import load_model  # noqa: E402
from studio.personalization.lora import LoraSpec, apply_loras, train_lora  # noqa: E402
from studio.personalization.training import TrainingSpec  # noqa: E402
from studio.tinyworld.analyzer import analyze  # noqa: E402
from studio.tinyworld.scenes import SceneObject, scene_from_objects  # noqa: E402
from studio.tinyworld.vocab import SIZES  # noqa: E402

INIT = {"ring": "circle", "star": "triangle"}


def training_images(shape: str, seed: int = 0) -> list:
    rng = random.Random(seed)
    images = []
    for i in range(8):
        size = rng.choice(["medium", "large", "huge"])
        r = SIZES[size]
        obj = SceneObject(shape, ("red", "blue")[i % 2], size, r, rng.uniform(r + 2, 62 - r), rng.uniform(r + 2, 62 - r))
        images.append(scene_from_objects(rng.choice(["black", "white", "gray"]), [obj]).image)
    return images


def judge(images, shape: str, want: dict, each: dict | None = None) -> tuple[int, int, int]:
    """(images with exactly one object of ``shape``, ... and the wanted attributes, total). ``each``, when given,
    counts per wanted attribute the images whose one object of ``shape`` has it (which of them fails)."""
    one = ok = 0
    for image in images:
        objects = analyze(image).objects
        if len(objects) == 1 and objects[0].shape == shape:
            one += 1
            o = objects[0]
            ok += all(getattr(o, k) == v for k, v in want.items())
            if each is not None:
                for k, v in want.items():
                    each[k] = each.get(k, 0) + (getattr(o, k) == v)
    return one, ok, len(images)


def evaluate(render, token: str, shape: str, seeds: int) -> dict:
    """``render(prompt, seed, batch)`` -> images. Rates over ``seeds`` seeds."""
    out = {}
    for name, prompt, want in (("green", f"a green {token}", {"colour": "green"}),
                               ("large_top_left", f"a large {token} at the top left",
                                {"size": "large", "position": "at the top left"})):
        one = ok = total = 0
        each: dict = {}
        for start in range(0, seeds, 8):
            images = render(prompt, 10_000 + start, min(8, seeds - start))
            a, b, n = judge(images, shape, want, each)
            one, ok, total = one + a, ok + b, total + n
        out[name] = {"shape": one / total, "shape_and_attributes": ok / total, "seeds": total,
                     "shape_and_each_attribute": {k: v / total for k, v in each.items()}}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinyworld", help="a Tiny World folder (default: the shipped weights)")
    p.add_argument("--shapes", default="ring,star")
    p.add_argument("--methods", default="textual-inversion,prospect,lora")
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--ti-steps", type=int, default=300)
    p.add_argument("--ti-lr", type=float, default=1e-3)
    p.add_argument("--init-word", default=None,
                   help="initializer text for every shape's token (default: circle for the ring, triangle for the star);"
                        " with --vectors N each vector starts at the next of its tokens")
    p.add_argument("--vectors", type=int, default=1,
                   help="textual inversion: vectors per token (A1111's option; the token becomes that many)")
    p.add_argument("--lora-steps", type=int, default=300)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--augment", default="none", choices=("none", "mirror", "mirror+flip"),
                   help="train on the images plus mirrored copies (training.augmented)")
    p.add_argument("--colour-keep", type=float, default=0.75,
                   help="how often a training caption names the colour (TrainingSpec/LoraSpec.colour_keep)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="personalization")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    controller = PersonalizationController(model)
    results = {"model": args.model, "weights_hash": model.weights_hash, "threads": torch.get_num_threads(),
               "augment": args.augment, "colour_keep": args.colour_keep, "vectors": args.vectors,
               "init_word": args.init_word or dict(INIT),
               "runs": []}
    rows = []
    for shape in [s.strip() for s in args.shapes.split(",") if s.strip()]:
        images, token = training_images(shape), f"<{shape}>"
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            t0 = time.perf_counter()
            drift = None
            if method in ("lora", "lora-resnets"):
                result = train_lora(model, images, LoraSpec(token, args.init_word or INIT[shape], rank=args.rank, steps=args.lora_steps,
                                                            resnets=method == "lora-resnets", augment=args.augment,
                                                            colour_keep=args.colour_keep))
                engine = Engine(apply_loras(model, [(result.lora, 1.0)]))
                seconds, losses = result.seconds, result.losses

                def render(prompt, seed, batch, engine=engine):
                    return engine.generate(GenerationRequest(prompt=prompt, steps=20, cfg=3.0, seed=seed,
                                                             batch_size=batch, width=64, height=64)).images
                circles = render("a red circle", 20_000, 8) + render("a red circle", 20_008, 8)
                drift = judge(circles, "circle", {})[0] / len(circles)
            else:
                spec = TrainingSpec(token, args.init_word or INIT[shape], method=method, steps=args.ti_steps,
                                    learning_rate=args.ti_lr, preview_every=0, augment=args.augment,
                                    colour_keep=args.colour_keep,
                                    vectors=args.vectors if method == "textual-inversion" else 1)
                result = controller.train(TrainConceptRequest(tuple(images), spec))
                seconds, losses = result.seconds, result.losses
                use = ConceptUse(result.concept)

                def render(prompt, seed, batch, use=use):
                    request = GenerationRequest(prompt=prompt, steps=20, cfg=3.0, seed=seed, batch_size=batch,
                                                width=64, height=64)
                    return controller.generate(PersonalizedRequest(request, (use,)), save=False).images
            rates = evaluate(render, token, shape, args.seeds)
            run = {"shape": shape, "method": method, "train_seconds": round(seconds, 1),
                   "steps": args.lora_steps if method.startswith("lora") else args.ti_steps, "final_loss": losses[-1],
                   "rates": rates, "red_circle_still_circle": drift, "total_seconds": round(time.perf_counter() - t0, 1)}
            results["runs"].append(run)
            rows.append([shape, method, run["train_seconds"], rates["green"]["shape"],
                         rates["green"]["shape_and_attributes"], rates["large_top_left"]["shape"],
                         rates["large_top_left"]["shape_and_attributes"], "-" if drift is None else drift])
            print(rows[-1], flush=True)
    print_table(["shape", "method", "train s", "'a green <t>': shape", "... and green", "'a large <t> at the top "
                 "left': shape", "... size and place", "'a red circle' still a circle"], rows)
    results["machine"] = machine(model.device)
    print(f"wrote {write_results(args.name, results, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
