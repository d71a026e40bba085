"""Engine vs StableDiffusionPipeline.__call__: max abs pixel difference on the same components, seeds, sampler,
steps and CFG, for Tiny World and tiny random SD 1.x / SD 2.x-v pipelines (every sampler).

    python bench/engine_equivalence.py
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.engine import SAMPLERS, Engine, GenerationRequest  # noqa: E402
from tests.test_engine import pipeline_pixels  # noqa: E402  (the test's own reference path)


def models():
    from studio.models import from_pipeline, load_model
    from tests.helpers import tiny_pipeline

    yield "tinyworld", load_model("tinyworld", device="cpu")
    for family in ("sd1", "sd2v"):
        yield f"random {family}", from_pipeline(tiny_pipeline(family), name=f"tiny-{family}")


def main() -> int:
    torch.set_num_threads(1)
    rows = []
    for name, model in models():
        size = model.default_size if model.default_size <= 64 else 64
        for sampler in SAMPLERS:
            req = GenerationRequest(prompt="a large red circle on a black background", negative_prompt="blue",
                                    sampler=sampler, steps=12, cfg=5.0, seed=3, width=size, height=size, batch_size=2)
            engine = Engine(model)
            result = engine.generate(req)
            ours = engine.decode(result.latents).numpy()
            theirs = pipeline_pixels(model, req, result.seeds)
            rows.append({"model": name, "sampler": sampler, "max_abs_pixel_diff": float(np.abs(ours - theirs).max())})
            print(f"{name:<12} {sampler:<16} max |engine - pipeline| = {rows[-1]['max_abs_pixel_diff']:.2e}")
    worst = max(r["max_abs_pixel_diff"] for r in rows)
    print(f"worst: {worst:.2e} (pixels in [0, 1])")
    out = ROOT / "bench" / "results" / "engine_equivalence.json"
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "machine": {"platform": platform.platform(), "torch": torch.__version__},
                               "command": "python bench/engine_equivalence.py", "worst": worst, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
