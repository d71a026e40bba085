"""The Tiny World training set: scenes drawn by the generator, with several caption variants per scene.

Images are stored as one uint8 array, captions as token ids, so a training step touches no Python drawing code.
Only the training shapes (circle, square, triangle) ever enter the set; ring and star stay held out.
"""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .captions import caption_for
from .scenes import SceneSpec, generate_scene
from .vocab import TRAIN_SHAPES

CAPTIONS_PER_SCENE = 4


@dataclass
class TinyWorldData:
    images: np.ndarray  # (N, 64, 64, 3) uint8
    captions: list[list[str]]  # N x CAPTIONS_PER_SCENE
    token_ids: np.ndarray  # (N, CAPTIONS_PER_SCENE, max_length) int32

    def __len__(self) -> int:
        return len(self.images)


def _scene_chunk(args) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    start, count, base_seed, tokenizer_path, partial, continuous_sizes, fine_sizes, single_share, colours, hollow = args
    images = np.empty((count, 64, 64, 3), np.uint8)
    captions = []
    spec = SceneSpec(shapes=TRAIN_SHAPES, continuous_sizes=continuous_sizes, single_share=single_share,
                     continuous_colours=colours, hollow_share=hollow)
    for i in range(count):
        seed = base_seed + start + i
        scene = generate_scene(seed, spec)
        images[i] = np.asarray(scene.image)
        rng = random.Random(seed * 7919 + 17)
        captions.append([caption_for(scene.background, scene.objects, rng, partial=partial, fine_sizes=fine_sizes)
                         for _ in range(CAPTIONS_PER_SCENE)])
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    flat = [c for caps in captions for c in caps]
    ids = tokenizer(flat, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    return images, captions, np.asarray(ids, np.int32).reshape(count, CAPTIONS_PER_SCENE, -1)


def build_dataset(n_scenes: int, tokenizer_path: Path, *, base_seed: int = 0, workers: int = 2, progress=None,
                  partial_captions: float = 0.0, continuous_sizes: bool = False,
                  fine_sizes: bool = False, single_share: float = 0.45,
                  continuous_colours: float = 0.0, hollow_share: float = 0.0) -> TinyWorldData:
    """Draw n_scenes scenes (seeds base_seed..) and tokenize their caption variants, in worker processes
    (``partial_captions``, ``fine_sizes``: see :mod:`.captions`; ``continuous_sizes``, ``single_share``,
    ``continuous_colours``, ``hollow_share``: see
    :class:`.scenes.SceneSpec`)."""
    chunk = 2000
    jobs = [(s, min(chunk, n_scenes - s), base_seed, str(tokenizer_path), float(partial_captions),
             bool(continuous_sizes), bool(fine_sizes), float(single_share),
             float(continuous_colours), float(hollow_share)) for s in range(0, n_scenes, chunk)]
    images, captions, token_ids = [], [], []
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        for imgs, caps, ids in (pool.map(_scene_chunk, jobs) if pool else map(_scene_chunk, jobs)):
            images.append(imgs)
            captions += caps
            token_ids.append(ids)
            if progress:
                progress(len(imgs))
    finally:
        if pool:
            pool.shutdown()
    return TinyWorldData(np.concatenate(images), captions, np.concatenate(token_ids))


def save_dataset(data: TinyWorldData, path: Path) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=data.images, token_ids=data.token_ids, captions=np.asarray(data.captions, dtype=object))
    tmp.replace(path)


def load_dataset(path: Path) -> TinyWorldData:
    with np.load(path, allow_pickle=True) as f:
        return TinyWorldData(f["images"], [list(c) for c in f["captions"]], f["token_ids"])
