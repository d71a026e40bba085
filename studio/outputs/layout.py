"""On-disk layout of the output store.

::

    <root>/
      history.sqlite3            history database (+ -wal / -shm)
      .lock                      inter-process lock for naming
      .counter                   last output number handed out
      2024-05-01/
        00041-1234.png           <counter:05d>-<seed>.png
        .studio-<pid>-<hex>.png.tmp   in-flight (or leftover) temp file
      .counter-<pid>-<hex>.tmp   in-flight counter update

Counters grow monotonically over the whole store, so a name is never
reused, even after files are deleted.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Iterator

HISTORY_FILENAME = "history.sqlite3"
LOCK_FILENAME = ".lock"
COUNTER_FILENAME = ".counter"
TEMP_SUFFIX = ".tmp"

DAY_DIR_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
OUTPUT_NAME_RE = re.compile(r"^(\d{5,})-(\d+)\.png$")
TEMP_NAME_RE = re.compile(r"^\.(?:studio|counter)-(\d+)-[0-9a-f]+(?:\.png)?\.tmp$")


def day_dir_name(created: datetime) -> str:
    """Directory for an output created at *created* (local calendar date)."""
    return created.astimezone().strftime("%Y-%m-%d")


def output_name(counter: int, seed: int) -> str:
    return f"{counter:05d}-{seed}.png"


def temp_name(pid: int | None = None) -> str:
    """Unique temp file name that records the writing process id."""
    return f".studio-{os.getpid() if pid is None else pid}-{secrets.token_hex(8)}.png{TEMP_SUFFIX}"


def temp_owner_pid(path: Path) -> int | None:
    match = TEMP_NAME_RE.match(path.name)
    return int(match.group(1)) if match else None


def output_counter(name: str) -> int | None:
    match = OUTPUT_NAME_RE.match(name)
    return int(match.group(1)) if match else None


def iter_day_dirs(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and DAY_DIR_RE.match(entry.name):
            yield entry


def iter_output_files(root: Path) -> Iterator[Path]:
    """Every ``<counter>-<seed>.png`` in the store's day directories."""
    for day in iter_day_dirs(root):
        for entry in sorted(day.iterdir()):
            if OUTPUT_NAME_RE.match(entry.name) and entry.is_file():
                yield entry


def iter_temp_files(root: Path) -> Iterator[Path]:
    """Every ``*.tmp`` in the store root and its day directories."""
    for folder in (root, *iter_day_dirs(root)):
        for entry in sorted(folder.glob(f"*{TEMP_SUFFIX}")):
            if entry.is_file():
                yield entry


def process_alive(pid: int) -> bool:
    """Best effort: is a process with this id running (on this machine)?"""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # cannot tell (e.g. Windows): assume alive, age decides
    return True


def is_stale_temp(path: Path, *, now: float, max_age_s: float) -> bool:
    """A temp file is stale when its writer is gone or it is older than *max_age_s*."""
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed or removed meanwhile
    pid = temp_owner_pid(path)
    return age > max_age_s or pid is None or not process_alive(pid)


def read_counter(root: Path) -> int:
    """Last counter recorded in ``.counter`` (0 if missing or unreadable)."""
    try:
        text = (root / COUNTER_FILENAME).read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return 0
    return int(text) if text.isdigit() else 0


def write_counter(root: Path, value: int) -> None:
    """Record *value* in ``.counter`` atomically (temp file + replace)."""
    temp = root / f".counter-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    temp.write_text(str(value), encoding="ascii")
    os.replace(temp, root / COUNTER_FILENAME)


def highest_counter(folder: Path) -> int:
    """Highest output counter among files in *folder* (0 if none)."""
    if not folder.is_dir():
        return 0
    counters = (output_counter(entry.name) for entry in folder.iterdir())
    return max((c for c in counters if c is not None), default=0)


def fsync_directory(folder: Path) -> None:
    """Persist a rename in *folder* (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
