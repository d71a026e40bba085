"""Crash safety and multi-process naming of OutputStore, with real subprocesses.

* writers are SIGKILLed at random moments; afterwards every PNG is complete,
  reconcile removes temp files, and rows and files match one to one;
* two processes saving at the same time never collide on a name.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from studio.outputs import OutputStore, read_image_settings
from studio.outputs.layout import iter_output_files, output_counter

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

REPO_ROOT = Path(__file__).resolve().parents[1]

# argv: root, first_seed, count, go_file ("-" = start at once)
WORKER = r"""
import os, sys, time
from PIL import Image
from studio.outputs import GenerationSettings, OutputStore, Provenance

root, first_seed, count, go_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
store = OutputStore(root, reconcile=False)
provenance = Provenance.collect(model_id="tinyworld", device="cpu", duration_s=0.01)
print("ready", flush=True)
while go_file != "-" and not os.path.exists(go_file):
    time.sleep(0.005)
for seed in range(first_seed, first_seed + count):
    image = Image.frombytes("RGB", (96, 96), os.urandom(96 * 96 * 3))
    settings = GenerationSettings(prompt=f"noise {seed}", sampler="Euler a", steps=4, cfg=7.0,
                                  seed=seed, width=96, height=96, model_name="tinyworld",
                                  controls={"writer": os.getpid()})
    saved = store.save(image, settings, provenance)
    print(saved.relative_path, flush=True)
"""


def start_worker(root: Path, first_seed: int, count: int, go_file: str = "-") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(root), str(first_seed), str(count), go_file],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", f"worker failed to start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    return proc


def assert_store_consistent(root: Path) -> list[Path]:
    """Every PNG complete and indexed, every row's file present, no temp files."""
    with OutputStore(root) as store:
        assert not list(root.rglob("*.tmp")), "reconcile must remove temp files of dead writers"
        pngs = list(iter_output_files(root))
        for png in pngs:
            with Image.open(png) as image:
                image.verify()
            with Image.open(png) as image:
                image.load()
            assert read_image_settings(png).source == "studio"
        rows = store.list(limit=1000)
        assert all(row.path.is_file() for row in rows)
        assert sorted(row.path for row in rows) == sorted(pngs)
        counters = [output_counter(png.name) for png in pngs]
        assert len(set(counters)) == len(counters)
    return pngs


def test_killed_writers_leave_no_corrupt_png_and_no_dangling_row(tmp_path):
    root = tmp_path / "out"
    rng = random.Random(20240501)
    returned: list[str] = []
    for round_ in range(8):
        proc = start_worker(root, first_seed=round_ * 10_000, count=10**6)
        time.sleep(rng.uniform(0.05, 0.35))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        # a fully printed line means save() returned: that output must survive
        returned += [line for line in out.split("\n")[:-1] if line]

    pngs = assert_store_consistent(root)
    assert pngs, "the writers should have saved something before being killed"
    saved = {png.relative_to(root).as_posix() for png in pngs}
    assert set(returned) <= saved


def test_two_processes_saving_at_once_never_collide(tmp_path):
    root = tmp_path / "out"
    go_file = tmp_path / "go"
    count = 15
    workers = [start_worker(root, first_seed=seed, count=count, go_file=str(go_file)) for seed in (1000, 2000)]
    go_file.touch()
    for proc in workers:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err

    pngs = assert_store_consistent(root)
    assert len(pngs) == 2 * count
    seeds = set()
    for png in pngs:
        parsed = read_image_settings(png)
        assert png.name.endswith(f"-{parsed.seed}.png")  # nobody overwrote anybody's file
        seeds.add(parsed.seed)
    assert seeds == set(range(1000, 1000 + count)) | set(range(2000, 2000 + count))
    assert sorted(output_counter(png.name) for png in pngs) == list(range(1, 2 * count + 1))
