"""A folder of saved concepts: listed, previewed, renamed, deleted.

Each entry is ``NAME.safetensors`` (an embedding in the diffusers format, or a LoRA with its token) and
``NAME.png`` (a preview). Learned concepts belong to the browser session that made them until they are saved here;
the folder holds only what someone saved. Names are plain (letters, digits, ``-``, ``_``); writes go through a
temporary file, so a failure leaves no half-written entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from studio.engine import InvalidRequest

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class LibraryEntry:
    name: str
    kind: str  # "embedding" or "lora"
    path: Path
    preview: Path | None


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME.match(name):
        raise InvalidRequest(f"a concept name is letters, digits, - or _ (at most 64), got {name!r}", "name")
    return name


class ConceptLibrary:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def entries(self) -> list[LibraryEntry]:
        if not self.folder.is_dir():
            return []
        out = []
        for path in sorted(self.folder.glob("*.safetensors")):
            preview = path.with_suffix(".png")
            kind = "lora" if path.stem.endswith("-lora") or _is_lora(path) else "embedding"
            out.append(LibraryEntry(path.stem, kind, path, preview if preview.is_file() else None))
        return out

    def path(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}.safetensors"

    def save(self, name: str, write, preview: Image.Image | None = None, *, overwrite: bool = False) -> LibraryEntry:
        """``write(path)`` writes the file (e.g. ``save_concept`` or ``save_lora``); then the preview is stored."""
        target = self.path(name)
        if target.exists() and not overwrite:
            raise InvalidRequest(f"a concept named {name!r} is already saved; choose another name", "name")
        self.folder.mkdir(parents=True, exist_ok=True)
        write(target)
        if preview is not None:
            tmp = target.with_suffix(".png.tmp")
            preview.save(tmp, format="PNG")
            tmp.replace(target.with_suffix(".png"))
        return next(e for e in self.entries() if e.name == target.stem)

    def rename(self, old: str, new: str) -> LibraryEntry:
        source, target = self.path(old), self.path(new)
        if not source.is_file():
            raise InvalidRequest(f"no saved concept named {old!r}", "name")
        if target.exists():
            raise InvalidRequest(f"a concept named {new!r} is already saved", "name")
        source.replace(target)
        if source.with_suffix(".png").is_file():
            source.with_suffix(".png").replace(target.with_suffix(".png"))
        return next(e for e in self.entries() if e.name == target.stem)

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not path.is_file():
            raise InvalidRequest(f"no saved concept named {name!r}", "name")
        path.unlink()
        path.with_suffix(".png").unlink(missing_ok=True)


def _is_lora(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return any(".lora" in k for k in f.keys())
    except Exception:  # an unreadable file is listed as an embedding; loading it reports the problem
        return False
