"""Memory and time of pixel-space token information maps: levels decoded a few at a time vs all at once.

A two-word decomposition compares four prompts; in pixel space each prompt's clean-image prediction at every noise
level and sample is decoded. The studio decodes ``DECODE_PIXELS`` pixels per prompt at a time (all of Tiny World's
levels at 64 px, two levels at 512 px) and keeps only the per-level differences; "all at once" (a budget no map
reaches) holds every decoded image first, as the studio did until 2026-12-08. Each row runs in its own process
(peak RSS is per process): its peak RSS above the RSS before the calls, and the wall time of a call, p50 over
--repeats. The map side is the maps' resolution (predictions decoded at the model's size, then resized), so Tiny
World shows what a 512 px map holds without a 512 px model. Both ways must give the same maps up to float32
rounding (largest difference <= 1e-4 of a map's maximum).

    python bench/information_memory.py [--sides 64,256,512] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from _common import add_common_args, choose_model, machine, print_table, write_results

PROMPT, WORDS = "a red circle and a large square", ["circle", "square"]


def rss_mb() -> float:
    """This process's resident memory now (not its peak), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one_run(args) -> dict:
    """In this process: the maps of one side at one budget (after a one-level warm-up that loads what the first call
    loads); the peak RSS above the RSS before the call in MB, wall seconds; the maps go to ``args.maps_out``."""
    import numpy as np
    import torch

    from studio.engine import Engine
    from studio.inspection import information
    from studio.tinyworld.scenes import SceneObject, scene_from_objects

    model, _ = choose_model(args)
    engine = Engine(model)
    if args.budget == "all":
        information.DECODE_PIXELS = 2**62
    scene = scene_from_objects("black", [SceneObject("circle", "red", "medium", 10.0, 20.0, 24.0),
                                         SceneObject("square", "blue", "large", 14.0, 44.0, 40.0)])
    size = model.default_size
    pixels = torch.from_numpy(np.asarray(scene.image.resize((size, size))).copy()).permute(2, 0, 1)[None] / 255
    x0 = engine.encode(pixels.float())[0]
    information.information_maps(model, x0, PROMPT, WORDS, levels=1, samples=1, decode=engine.decode)  # warm-up
    before = rss_mb()
    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = information.information_maps(model, x0, PROMPT, WORDS, size=(args.side, args.side),
                                           decode=engine.decode)
        walls.append(time.perf_counter() - t0)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    np.savez(args.maps_out, **{k: v.numpy() for k, v in out.maps.items()})
    return {"side": args.side, "budget": args.budget, "peak_rss_above_start_mb": round(growth, 1),
            "wall_s_p50": round(statistics.median(walls), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--sides", default="64,256,512", help="map sides to measure (comma-separated)")
    p.add_argument("--out", default=None)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process: one measurement
    p.add_argument("--side", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--budget", default="default", help=argparse.SUPPRESS)
    p.add_argument("--maps-out", default=None, help=argparse.SUPPRESS)
    p.set_defaults(repeats=3)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return 0

    passed = [f"--{k}={v}" for k, v in (("model", args.model), ("device", args.device), ("dtype", args.dtype),
                                        ("threads", args.threads), ("repeats", args.repeats)) if v is not None]
    import numpy as np

    rows, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(s) for s in args.sides.split(",") if s):
            pair = []
            for budget in ("all", "default"):
                maps = f"{tmp}/{side}-{budget}.npz"
                cmd = [sys.executable, __file__, "--one", "--side", str(side), "--budget", budget,
                       "--maps-out", maps, *passed]
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                pair.append((json.loads(done.stdout.strip().splitlines()[-1]), np.load(maps)))
            (old, old_maps), (new, new_maps) = pair
            # decode batches of other sizes may round differently in float32: the same maps up to that
            gap = max(float(np.abs(old_maps[k] - new_maps[k]).max() / max(np.abs(old_maps[k]).max(), 1e-300))
                      for k in old_maps.files)
            same = gap <= 1e-4
            new["max_difference_from_all_at_once_relative_to_map_max"] = gap
            rows += [old, new]
            table.append([side, old["peak_rss_above_start_mb"], new["peak_rss_above_start_mb"],
                          round(old["peak_rss_above_start_mb"] / max(new["peak_rss_above_start_mb"], 1e-9), 2),
                          old["wall_s_p50"], new["wall_s_p50"], round(new["wall_s_p50"] / old["wall_s_p50"], 3),
                          same])
    print_table(["map side", "all at once MB", "a few levels MB", "all / few", "all at once s", "a few levels s",
                 "time ratio", "same maps"], table)
    import torch

    path = write_results("information-memory", {
        "model": args.model or "tinyworld", "threads": args.threads, "repeats": args.repeats, "prompt": PROMPT,
        "words": WORDS, "levels_samples": "studio defaults (12 x 2)",
        "machine": machine(torch.device("cpu")), "rows": rows}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
