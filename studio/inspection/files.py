"""Files of inspection exports: arrays and images as bytes, and writing a set of files all at once."""

from __future__ import annotations

import io
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def safe_name(name: str) -> str:
    """A word or label as a file-name part."""
    return re.sub(r"[^\w.-]+", "_", name)[:60] or "token"


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(images: list[Image.Image], columns: int, scale: int = 2) -> Image.Image:
    """``images`` on a grid of ``columns``, each enlarged ``scale`` times (nearest)."""
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w * scale, rows * h * scale), "white")
    for k, im in enumerate(images):
        sheet.paste(im.resize((w * scale, h * scale), Image.NEAREST),
                    ((k % columns) * w * scale, (k // columns) * h * scale))
    return sheet


def write_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    """Write every file into ``folder``: all into a temporary sibling folder first, then moved in, so a failure
    while writing leaves no partial export behind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        out = []
        for name in files:
            (staging / name).replace(folder / name)
            out.append(folder / name)
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)
