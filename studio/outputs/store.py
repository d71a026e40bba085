"""Atomic, collision-free saving of generated images.

:meth:`OutputStore.save` order of operations (file first, then row):

1. validate inputs and encode the PNG in memory (nothing touches disk on error);
2. write it to a temp file in the destination directory and fsync it;
3. under an inter-process lock: pick the next counter, ``os.replace`` the
   temp file onto ``<day>/<counter:05d>-<seed>.png``, record the counter;
4. fsync the directory, then insert the history row.

A process killed at any point leaves either a ``*.tmp`` (removed by
reconcile), a complete PNG without a row (re-indexed by reconcile from its
JSON chunk), or a complete PNG with its row - never a partial PNG under a
final name and never a row without its file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from PIL import Image

from .errors import HistoryError, StoreError
from .history import History, HistoryRecord, ReconcileReport
from .layout import (
    HISTORY_FILENAME, LOCK_FILENAME, day_dir_name, fsync_directory, highest_counter,
    output_name, read_counter, temp_name, write_counter,
)
from .locking import exclusive_lock
from .metadata import png_text_chunks, provenance_dict
from .pngio import encode_png
from .provenance import Provenance, iso_utc, parse_iso, utc_now
from .settings import GenerationSettings

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class SavedOutput:
    """A saved image: its history row id, absolute path and settings."""

    id: int
    path: Path
    relative_path: str
    created: str
    settings: GenerationSettings

    @classmethod
    def from_record(cls, record: HistoryRecord, settings: GenerationSettings) -> "SavedOutput":
        return cls(id=record.id, path=record.path, relative_path=record.relative_path,
                   created=record.created, settings=settings)


def _stamp_created(provenance: Provenance | Mapping[str, Any], now: datetime) -> tuple[dict[str, Any], datetime]:
    """Provenance as a dict with ``created`` set (kept if given), and that time."""
    if isinstance(provenance, Provenance) and provenance.created is None:
        provenance = replace(provenance, created=iso_utc(now))
    document = provenance_dict(provenance)
    if document.get("created") is None:
        document["created"] = iso_utc(now)
    return document, parse_iso(document["created"])


def _write_durably(path: Path, data: bytes) -> None:
    """Create *path* exclusively, write *data*, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputStore:
    """Saves images with metadata under *root* and records them in history.

    ``history`` defaults to ``<root>/history.sqlite3``.  With
    ``reconcile=True`` (default) the store repairs leftovers of crashed
    processes on open; the report is kept in :attr:`last_reconcile`.
    ``clock`` returns an aware datetime (injectable for tests).
    """

    def __init__(self, root: Path | str, *, history: History | None = None,
                 reconcile: bool = True, clock: Clock = utc_now) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create output folder {self.root}: {exc}") from None
        self._owns_history = history is None
        self.history = history if history is not None else History(
            self.root / HISTORY_FILENAME, files_root=self.root)
        self._clock = clock
        self.last_reconcile = self.history.reconcile() if reconcile else ReconcileReport()

    def close(self) -> None:
        """Close the history database if this store opened it."""
        if self._owns_history:
            self.history.close()

    def __enter__(self) -> "OutputStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def reconcile(self, *, temp_max_age_s: float = 3600.0) -> ReconcileReport:
        """See :meth:`History.reconcile`."""
        self.last_reconcile = self.history.reconcile(temp_max_age_s=temp_max_age_s)
        return self.last_reconcile

    def save(self, image: Image.Image, settings: GenerationSettings,
             provenance: Provenance | Mapping[str, Any]) -> SavedOutput:
        """Save *image* atomically with both metadata chunks; add a history row."""
        # 1. validate and encode in memory
        if not isinstance(settings, GenerationSettings):
            raise TypeError(f"settings must be GenerationSettings, got {type(settings).__name__}")
        document, created = _stamp_created(provenance, self._clock())
        data = encode_png(image, png_text_chunks(settings, document))

        # 2. temp file next to the destination, fsynced
        folder = self.root / day_dir_name(created)
        temp = folder / temp_name()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_durably(temp, data)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StoreError(f"cannot write output in {folder}: {exc}") from None

        # 3. collision-free final name, under the store lock
        try:
            final = self._publish(temp, folder, settings.seed)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StoreError(f"cannot move output into place in {folder}: {exc}") from None

        # 4. the row, once the file is durable
        fsync_directory(folder)
        try:
            record = self.history.add(final, settings, created=created)
        except HistoryError as exc:
            raise StoreError(
                f"image saved to {final} but its history row failed ({exc}); "
                "reconcile() will re-index it"
            ) from None
        return SavedOutput.from_record(record, settings)

    def _publish(self, temp: Path, folder: Path, seed: int) -> Path:
        with exclusive_lock(self.root / LOCK_FILENAME):
            counter = max(read_counter(self.root), highest_counter(folder)) + 1
            final = folder / output_name(counter, seed)
            while final.exists():  # only if someone wrote without the lock
                counter += 1
                final = folder / output_name(counter, seed)
            os.replace(temp, final)
            try:
                write_counter(self.root, counter)
            except OSError:
                pass  # the counter is a hint; the directory scan above still avoids collisions
        return final

    def get(self, output_id: int) -> HistoryRecord | None:
        return self.history.get(output_id)

    def list(self, limit: int = 50, offset: int = 0, *, text: str | None = None,
             model: str | None = None, workbench: str | None = None) -> list[HistoryRecord]:
        return self.history.list(limit, offset, text=text, model=model, workbench=workbench)
