"""How well the Tiny World analyzer agrees with the generator's ground truth (the instrument's accuracy).

    python bench/analyzer_agreement.py [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.tinyworld.agreement import analyzer_agreement  # noqa: E402
from studio.tinyworld.vocab import ALL_SHAPES, TRAIN_SHAPES  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "analyzer_agreement.json"))
    args = p.parse_args()
    rows = {}
    for name, shapes in (("training shapes", TRAIN_SHAPES), ("with held-out ring, star", ALL_SHAPES)):
        t0 = time.time()
        rows[name] = analyzer_agreement(args.n, shapes) | {"ms_per_scene": 1000 * (time.time() - t0) / args.n}
    keys = ["background", "count", "colour", "shape", "radius_within_1px", "position"]
    print(f"{'scenes':<28}" + "".join(f"{k:>19}" for k in keys))
    for name, r in rows.items():
        print(f"{name:<28}" + "".join(f"{r[k]:>19.2%}" for k in keys))
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "python": platform.python_version()},
              "command": "python bench/analyzer_agreement.py " + " ".join(sys.argv[1:]), "n": args.n, "results": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
