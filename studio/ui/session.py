"""Per-browser-session state, kept in ``gr.State`` (never in module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.engine import CancelToken

MAX_GALLERY = 200


@dataclass
class SessionState:
    """What one browser tab owns.

    ``gallery`` holds ``(path, caption)`` of this session's images, newest
    first; ``last_seed`` the seed of the last finished run; ``cancel`` the token
    of the run in progress (``None`` when idle); ``history_ids`` the history rows
    the history browser currently lists (to map a click to a row)."""

    gallery: list[tuple[str, str]] = field(default_factory=list)
    last_seed: int | None = None
    cancel: CancelToken | None = None
    history_ids: list[int] = field(default_factory=list)
    history_selected: int | None = None

    @property
    def running(self) -> bool:
        return self.cancel is not None

    def add_images(self, items: list[tuple[str, str]]) -> None:
        """Put a run's images first (in batch order), keep at most ``MAX_GALLERY``."""
        self.gallery[:0] = items
        del self.gallery[MAX_GALLERY:]

    def close(self) -> None:
        """The session ended (its state is being dropped): stop its run, if any."""
        if self.cancel is not None:
            self.cancel.cancel()

    def __deepcopy__(self, memo):
        # gr.State deep-copies its initial value per session; a token never travels
        return SessionState(gallery=list(self.gallery), last_seed=self.last_seed,
                            history_ids=list(self.history_ids), history_selected=self.history_selected)
