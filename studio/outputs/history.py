"""History of saved outputs in SQLite (standard library ``sqlite3``, WAL mode).

One table, ``outputs``; paths are stored relative to ``files_root`` (the
output store root) so the whole folder can be moved.  One connection per
:class:`History`, shared by threads under a lock (fine for a Gradio server);
several processes can use the same database (WAL + busy timeout).

Reconcile policy (run on startup by :class:`~studio.outputs.store.OutputStore`):

1. leftover ``*.tmp`` files whose writer process is gone (or that are older
   than ``temp_max_age_s``) are deleted;
2. rows whose file is missing are dropped;
3. output PNGs without a row (a writer killed between rename and insert)
   are re-indexed from their ``studio`` JSON chunk; PNGs without a readable
   studio chunk are left untouched and reported as ``skipped``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .errors import HistoryError, MetadataError
from .layout import is_stale_temp, iter_output_files, iter_temp_files
from .metadata import STUDIO_KEY, parse_studio_chunk
from .pngio import read_image_text
from .provenance import iso_utc, parse_iso
from .settings import GenerationSettings

SCHEMA_VERSION = 1
MAX_LIST_LIMIT = 1000
_COLUMNS = ("id, path, created, prompt, negative, model, seed, sampler, steps, cfg, "
            "width, height, workbench, settings_json")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outputs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    path          TEXT NOT NULL UNIQUE,
    created       TEXT NOT NULL,
    prompt        TEXT NOT NULL,
    negative      TEXT NOT NULL,
    model         TEXT NOT NULL,
    seed          TEXT NOT NULL,   -- text: seeds may exceed SQLite's int64
    sampler       TEXT NOT NULL,
    steps         INTEGER NOT NULL,
    cfg           REAL NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    workbench     TEXT NOT NULL,
    settings_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_by_created ON outputs (created DESC, id DESC);
CREATE INDEX IF NOT EXISTS outputs_by_model ON outputs (model);
CREATE INDEX IF NOT EXISTS outputs_by_workbench ON outputs (workbench);
"""


@dataclass(frozen=True)
class HistoryRecord:
    """One history row.  ``path`` is absolute; ``relative_path`` is as stored."""

    id: int
    path: Path
    relative_path: str
    created: str
    prompt: str
    negative_prompt: str
    model: str
    seed: int
    sampler: str
    steps: int
    cfg: float
    width: int
    height: int
    workbench: str
    settings_json: str

    def settings(self) -> GenerationSettings:
        """The full :class:`GenerationSettings` stored with the row."""
        try:
            data = json.loads(self.settings_json)
        except ValueError as exc:
            raise MetadataError(f"history row {self.id} has invalid settings JSON: {exc}") from None
        return GenerationSettings.from_dict(data)


@dataclass(frozen=True)
class HistoryQuery:
    """Filters and paging for :meth:`History.list`.

    ``text`` matches a substring of the prompt (case-insensitive for ASCII);
    ``model`` and ``workbench`` match exactly.  Newest first.
    """

    limit: int = 50
    offset: int = 0
    text: str | None = None
    model: str | None = None
    workbench: str | None = None

    def __post_init__(self) -> None:
        for name, low, high in (("limit", 1, MAX_LIST_LIMIT), ("offset", 0, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < low or (high is not None and value > high):
                raise ValueError(f"{name} must be in [{low}, {high or 'inf'}], got {value}")
        for name in ("text", "model", "workbench"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} filter must be a str or None, got {value!r}")

    def where(self) -> tuple[str, list[Any]]:
        """SQL WHERE clause (possibly empty) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.text:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("prompt LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if self.model is not None:
            clauses.append("model = ?")
            params.append(self.model)
        if self.workbench is not None:
            clauses.append("workbench = ?")
            params.append(self.workbench)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


@dataclass(frozen=True)
class ReconcileReport:
    """What :meth:`History.reconcile` changed."""

    removed_temp_files: tuple[Path, ...] = ()
    dropped_rows: tuple[int, ...] = ()
    reindexed: tuple[Path, ...] = ()
    skipped: tuple[Path, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.removed_temp_files or self.dropped_rows or self.reindexed)


class History:
    """SQLite history of outputs.  Use as a context manager or call :meth:`close`."""

    def __init__(self, db_path: Path | str, *, files_root: Path | str | None = None,
                 timeout_s: float = 30.0) -> None:
        # 1. paths
        self.db_path = Path(db_path)
        self.files_root = Path(files_root) if files_root is not None else self.db_path.parent
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._root_resolved = self.files_root.resolve()
        self._lock = threading.Lock()
        # 2. connection shared by threads, serialised by self._lock
        try:
            self._conn = sqlite3.connect(self.db_path, timeout=timeout_s,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open history database {self.db_path}: {exc}") from None
        # 3. WAL mode and schema
        try:
            self._prepare()
        except HistoryError:
            self._conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise HistoryError(
                f"{self.db_path} is not a usable history database ({exc}); move it aside "
                "and reopen: reconcile() re-indexes outputs from their PNG metadata"
            ) from None

    def _prepare(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise HistoryError(f"{self.db_path}: cannot enable WAL journal mode (got {mode!r})")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"{self.db_path} was written by a newer studio (schema {version} > {SCHEMA_VERSION})"
            )
        self._conn.executescript(_SCHEMA)
        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        """SQLite journal mode in use (``"wal"``)."""
        return str(self._execute("PRAGMA journal_mode")[0][0]).lower()

    # --- paths --------------------------------------------------------------

    def relative_path(self, path: Path | str) -> str:
        """How *path* is stored: POSIX path relative to files_root when inside it."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self._root_resolved).as_posix()
        except ValueError:
            return str(resolved)

    def absolute_path(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.files_root / path

    # --- queries ------------------------------------------------------------

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise HistoryError(f"history database {self.db_path}: {exc}") from None

    def _record(self, row: tuple) -> HistoryRecord:
        (id_, path, created, prompt, negative, model, seed, sampler, steps, cfg,
         width, height, workbench, settings_json) = row
        return HistoryRecord(
            id=id_, path=self.absolute_path(path), relative_path=path, created=created,
            prompt=prompt, negative_prompt=negative, model=model, seed=int(seed),
            sampler=sampler, steps=steps, cfg=cfg, width=width, height=height,
            workbench=workbench, settings_json=settings_json,
        )

    def add(self, path: Path | str, settings: GenerationSettings, *,
            created: datetime | str) -> HistoryRecord:
        """Insert a row for an existing file; returns the row.

        Idempotent per path: if a row for *path* exists already (e.g. it was
        re-indexed by a concurrent reconcile) that row is returned.
        """
        if not isinstance(settings, GenerationSettings):
            raise TypeError(f"settings must be GenerationSettings, got {type(settings).__name__}")
        created_iso = iso_utc(created if isinstance(created, datetime) else parse_iso(created))
        stored = self.relative_path(path)
        self._execute(
            "INSERT INTO outputs (path, created, prompt, negative, model, seed, sampler, steps,"
            " cfg, width, height, workbench, settings_json)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO NOTHING",
            (stored, created_iso, settings.prompt, settings.negative_prompt, settings.model_name,
             str(settings.seed), settings.sampler, settings.steps, settings.cfg, settings.width,
             settings.height, settings.workbench, json.dumps(settings.to_dict(), ensure_ascii=False)),
        )
        rows = self._execute(f"SELECT {_COLUMNS} FROM outputs WHERE path = ?", (stored,))
        if not rows:
            raise HistoryError(f"row for {stored} vanished right after insert (concurrent reconcile?)")
        return self._record(rows[0])

    def get(self, output_id: int) -> HistoryRecord | None:
        """The row with this id, or ``None``."""
        rows = self._execute(f"SELECT {_COLUMNS} FROM outputs WHERE id = ?", (output_id,))
        return self._record(rows[0]) if rows else None

    def list(self, limit: int = 50, offset: int = 0, *, text: str | None = None,
             model: str | None = None, workbench: str | None = None) -> list[HistoryRecord]:
        """Rows, newest first, filtered (see :class:`HistoryQuery`)."""
        query = HistoryQuery(limit=limit, offset=offset, text=text, model=model, workbench=workbench)
        where, params = query.where()
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM outputs{where} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
            (*params, query.limit, query.offset),
        )
        return [self._record(row) for row in rows]

    def count(self, *, text: str | None = None, model: str | None = None,
              workbench: str | None = None) -> int:
        """Number of rows matching the filters."""
        where, params = HistoryQuery(text=text, model=model, workbench=workbench).where()
        return self._execute(f"SELECT COUNT(*) FROM outputs{where}", params)[0][0]

    def models(self) -> list[str]:
        """Distinct model names, for a filter dropdown."""
        return [row[0] for row in self._execute("SELECT DISTINCT model FROM outputs ORDER BY model")]

    # --- repair -------------------------------------------------------------

    def reconcile(self, *, temp_max_age_s: float = 3600.0) -> ReconcileReport:
        """Make rows and files agree (see the module docstring for the policy)."""
        # 1. leftover temp files of dead writers
        removed: list[Path] = []
        now = time.time()
        for temp in iter_temp_files(self.files_root):
            if is_stale_temp(temp, now=now, max_age_s=temp_max_age_s):
                temp.unlink(missing_ok=True)
                removed.append(temp)

        # 2. rows whose file is gone
        rows = self._execute("SELECT id, path FROM outputs")
        missing = [id_ for id_, stored in rows if not self.absolute_path(stored).is_file()]
        for id_ in missing:
            self._execute("DELETE FROM outputs WHERE id = ?", (id_,))

        # 3. PNGs without a row: re-index from their studio chunk
        known = {stored for _, stored in rows}
        reindexed: list[Path] = []
        skipped: list[Path] = []
        for png in iter_output_files(self.files_root):
            if self.relative_path(png) in known:
                continue
            try:
                settings, created = self._settings_from_png(png)
            except MetadataError:
                skipped.append(png)
                continue
            self.add(png, settings, created=created)
            reindexed.append(png)
        return ReconcileReport(tuple(removed), tuple(missing), tuple(reindexed), tuple(skipped))

    @staticmethod
    def _settings_from_png(png: Path) -> tuple[GenerationSettings, datetime]:
        text = read_image_text(png, accepted="only studio PNGs are re-indexed")
        if STUDIO_KEY not in text:
            raise MetadataError(f"{png} has no studio chunk")
        parsed = parse_studio_chunk(text[STUDIO_KEY])
        created_text = parsed.provenance.get("created")
        try:
            created = parse_iso(created_text) if isinstance(created_text, str) else None
        except ValueError:
            created = None
        if created is None:
            created = datetime.fromtimestamp(png.stat().st_mtime, tz=timezone.utc)
        return parsed.to_generation_settings(), created
