"""Generate controller: the one place that turns a request into saved images.

The Gradio UI and the CLI (``python -m studio generate``) are thin callers of
:class:`GenerateController`; nothing here imports a UI toolkit. A run

1. resolves the seed (``-1``/``None`` = random) and the model's default size;
2. validates the request (:class:`~studio.engine.InvalidRequest` passes through
   with its message) - nothing is generated or saved for a bad request;
3. runs the :class:`~studio.engine.Engine` with a step callback that reports
   progress and renders throttled live previews of the x0 prediction
   (:class:`~studio.engine.preview.LatentPreviewer` +
   :class:`~studio.engine.preview.PreviewThrottle`, at most ``max_fps`` frames
   a second, stale frames dropped, rendered off the denoising thread);
4. saves every image through the store (an :class:`~studio.outputs.OutputStore`
   or a :class:`FileSaver`) with the full settings, the A1111 ``parameters``
   text and provenance (model id, weights hash, scheduler, per-image seed,
   device, dtype, library versions, duration).

Notebook example (quoted in the README)::

    from dataclasses import replace

    from studio.controllers import GenerateController
    from studio.models import load_model
    from studio.outputs import OutputStore

    model = load_model("tinyworld")                      # loads once; reuse it for many runs
    controller = GenerateController(model, OutputStore("outputs"))
    request = replace(controller.defaults(), prompt="a red house by a lake", seed=-1, batch_size=2)
    outcome = controller.run(request, on_progress=lambda done, total: print(f"step {done}/{total}", end="\\r"))
    print()
    for seed, path in zip(outcome.seeds, outcome.paths):
        print(seed, path)                                 # outputs/<day>/<counter>-<seed>.png
    print("reuse with seed", outcome.seed, "- took", round(outcome.timings["total"], 2), "s")
    again = controller.run(replace(request, seed=outcome.seed))  # same images again

Callbacks: ``on_progress(done, total)`` is called on the calling thread after
every denoising step (keep it cheap); ``on_preview(image, done, total)`` is
called on a background preview thread (``PreviewConfig(threaded=False)``
calls it inline instead, for deterministic tests). ``done`` counts finished
steps (1..total). Errors raised by either callback never stop a run; they are
reported once in ``outcome.warnings``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from PIL import Image

from studio.engine import Cancelled, CancelToken, Engine, GenerationRequest, InvalidRequest, LatentCache, RunHooks
from studio.engine import StartLatents, StepEvent
from studio.engine.preview import LatentPreviewer, PreviewStream, PreviewThrottle
from studio.engine.samplers import make_scheduler
from studio.engine.validate import MAX_SEED
from studio.outputs import GenerationSettings, History, MetadataError, Provenance, SavedOutput, png_text_chunks
from studio.outputs import read_image_settings
from studio.outputs.layout import fsync_directory
from studio.outputs.pngio import encode_png
from studio.outputs.provenance import iso_utc, utc_now
from studio.outputs.settings import freeze_json

log = logging.getLogger(__name__)

RANDOM_SEED = -1
DEFAULTS_FILENAME = "studio_defaults.json"
DEFAULT_WORKBENCH = "generate"
#: Request fields a model's ``studio_defaults.json`` may set.
DEFAULTABLE_FIELDS = ("prompt", "negative_prompt", "sampler", "steps", "cfg", "width", "height", "batch_size")

PreviewCallback = Callable[[Image.Image, int, int], None]
ProgressCallback = Callable[[int, int], None]


# ----------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class PreviewConfig:
    """How live previews are produced.

    ``max_fps`` caps frames per second; ``max_busy`` caps the share of wall time
    spent converting latents (slow previewers back off); ``clock`` is injectable
    for tests; ``upscale`` resizes latent-resolution previews to the image size;
    ``threaded=False`` renders and calls ``on_preview`` inline on the denoising
    thread (deterministic; for tests and scripts) instead of on a background
    thread that drops stale frames."""

    max_fps: float = 10.0
    max_busy: float = 0.25
    clock: Callable[[], float] = time.monotonic
    upscale: bool = True
    threaded: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.max_fps, (int, float)) and self.max_fps > 0):
            raise ValueError(f"max_fps must be > 0, got {self.max_fps!r}")
        if not (isinstance(self.max_busy, (int, float)) and 0 < self.max_busy <= 1):
            raise ValueError(f"max_busy must be in (0, 1], got {self.max_busy!r}")


@dataclass(frozen=True)
class GenerateOutcome:
    """A finished run.

    ``request`` is the request as run: concrete seed and size (feed it back to
    :meth:`GenerateController.run` to reproduce the batch). ``seeds[i]`` is the
    seed of ``images[i]``; ``saved[i]`` is its :class:`SavedOutput` (or path,
    for a :class:`FileSaver` without history), empty when there is no store.
    ``timings`` in seconds: ``encode``, ``denoise``, ``decode``, ``per_step``,
    ``save`` and ``total`` (validation to last save)."""

    images: tuple[Image.Image, ...]
    saved: tuple[SavedOutput | Path, ...]
    seeds: tuple[int, ...]
    warnings: tuple[str, ...]
    timings: Mapping[str, float]
    request: GenerationRequest
    previews: int = 0

    @property
    def seed(self) -> int:
        """The run's (first) seed: ``replace(request, seed=outcome.seed)`` reuses it."""
        return self.request.seed

    @property
    def last_seed(self) -> int:
        """Alias of :attr:`seed` for a "reuse last seed" button."""
        return self.request.seed

    @property
    def paths(self) -> tuple[Path, ...]:
        """Where each image was saved (empty without a store)."""
        return tuple(s if isinstance(s, Path) else Path(s.path) for s in self.saved)


class Saver(Protocol):
    """What the controller saves through: :class:`~studio.outputs.OutputStore` or :class:`FileSaver`."""

    def save(self, image: Image.Image, settings: GenerationSettings,
             provenance: Provenance) -> SavedOutput | Path: ...


# ----------------------------------------------------------------------------- helpers


def resolve_seed(seed: int | None, rng: random.Random | None = None) -> int:
    """``None`` or ``-1`` -> a random seed in ``0..2**32-1`` (drawn from ``rng``,
    default the OS's entropy); any other seed must already be in that range."""
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and seed == RANDOM_SEED):
        return (rng or random.SystemRandom()).randint(0, MAX_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed must be -1 (random) or an integer in 0..{MAX_SEED}, got {seed!r}", "seed")
    return seed


def settings_from_image(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """Request fields stored in an image ("load settings from image").

    Accepts a path or PNG bytes (studio PNGs or A1111-compatible ones). Returns
    the fields that could be read, ready for ``replace(request, **fields)``
    (missing ones are left out so the caller's values stay). Raises
    :class:`~studio.outputs.MetadataError` with a clear message when the file is
    missing, not an image, corrupt or carries no generation metadata."""
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    if not isinstance(source, (str, os.PathLike, bytes)):
        raise MetadataError(f"expected an image path or PNG bytes, got {type(source).__name__}")
    return dict(read_image_settings(source).request_fields())


def model_defaults(model) -> GenerationRequest:
    """The model's default request: its ``studio_defaults.json`` when the model
    folder has one, else the usual SD defaults at the model's native size.
    The seed is ``-1`` (random)."""
    size = int(model.default_size)
    values: dict[str, Any] = {"sampler": "DPM++ 2M", "steps": 20, "cfg": 7.5, "width": size, "height": size,
                              "seed": RANDOM_SEED}
    folder = getattr(model, "source_path", None)
    path = Path(folder) / DEFAULTS_FILENAME if folder else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            log.warning("ignoring %s (%s); using the usual SD defaults", path, e)
        else:
            values.update({k: data[k] for k in DEFAULTABLE_FIELDS if k in data})
    return GenerationRequest(**values)


def display_name(model) -> str:
    """Short model name for settings/A1111 text: the spec for ids, the file or
    folder name for paths (the full spec stays in the provenance)."""
    name = str(model.name)
    path = Path(name).expanduser()
    if path.is_file():
        return path.stem
    if path.is_dir() and ("/" in name or "\\" in name):
        return path.resolve().name or name
    return name


def _json_safe(mapping: Mapping) -> dict[str, Any]:
    out = {}
    for key, value in mapping.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


class FileSaver:
    """Saves each image atomically (temp file + fsync + rename) at
    ``path_for(settings)`` with the same PNG metadata as the output store; with
    ``history`` each file is also recorded there (and ``save`` returns its
    :class:`SavedOutput`, else the path). An existing file of that name is
    replaced; readers never see a partial PNG."""

    def __init__(self, path_for: Callable[[GenerationSettings], Path | str], *, history: History | None = None):
        self.path_for = path_for
        self.history = history

    def save(self, image: Image.Image, settings: GenerationSettings, provenance: Provenance) -> SavedOutput | Path:
        if not isinstance(provenance, Provenance):
            raise TypeError(f"provenance must be a Provenance, got {type(provenance).__name__}")
        if provenance.created is None:
            provenance = replace(provenance, created=iso_utc(utc_now()))
        path = Path(self.path_for(settings))
        data = encode_png(image, png_text_chunks(settings, provenance))  # errors before touching disk
        write_atomic(path, data)
        if self.history is None:
            return path
        record = self.history.add(path, settings, created=provenance.created)
        return SavedOutput.from_record(record, settings)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(temp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


# ----------------------------------------------------------------------------- the controller


class _Observer:
    """The engine step callback: progress, then (throttled) previews."""

    def __init__(self, model, on_progress, on_preview, config: PreviewConfig):
        self.on_progress = on_progress
        self.on_preview = on_preview
        self.errors: list[str] = []
        self.previews = 0
        self.stream: PreviewStream | None = None
        self.previewer = self.throttle = None
        if on_preview is not None:
            self.previewer = LatentPreviewer(model, upscale=config.upscale)
            if config.threaded:
                self.stream = PreviewStream(self.previewer, sink=self._sink, max_fps=config.max_fps,
                                            max_busy=config.max_busy, clock=config.clock)
            else:
                self.throttle = PreviewThrottle(config.max_fps, clock=config.clock)

    def __call__(self, event: StepEvent) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(event.step + 1, event.num_steps)
            except Exception as e:  # noqa: BLE001 - a broken progress bar must not stop generation
                self._error("progress callback", e)
        if self.stream is not None:
            self.stream(event)
        elif self.throttle is not None and self.throttle.ready():
            try:
                self._sink(self.previewer.to_image(event.x0_pred), event)
            except Exception as e:  # noqa: BLE001
                self._error("preview", e)

    def _sink(self, image: Image.Image, event: StepEvent) -> None:
        self.previews += 1
        self.on_preview(image, event.step + 1, event.num_steps)

    def _error(self, what: str, err: BaseException) -> None:
        if not any(m.startswith(what) for m in self.errors):
            self.errors.append(f"{what} failed and was skipped: {type(err).__name__}: {err}")

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            if self.stream.error is not None:
                self._error("preview", self.stream.error)


class GenerateController:
    """Validate, generate with live previews, save with provenance.

    ``store`` is an :class:`~studio.outputs.OutputStore`, a :class:`FileSaver`
    or ``None`` (nothing is saved). ``preview`` configures live previews;
    ``rng`` draws random seeds (default: OS entropy). Safe to share between
    threads: runs on one model are serialised by the model's run lock."""

    def __init__(self, model, store: Saver | None = None, *, preview: PreviewConfig = PreviewConfig(),
                 rng: random.Random | None = None):
        self.model = model
        self.store = store
        self.preview = preview
        self.rng = rng
        self.engine = Engine(model)
        self.last_seed: int | None = None

    def with_store(self, store: Saver | None) -> GenerateController:
        """The same controller (model, engine, preview settings) saving to ``store``."""
        other = GenerateController.__new__(GenerateController)
        other.__dict__.update(self.__dict__)
        other.store = store
        return other

    def for_model(self, model) -> GenerateController:
        """A controller with the same store and preview settings running ``model`` (e.g. a session's edited copy)."""
        other = self.with_store(self.store)
        other.model = model
        other.engine = Engine(model)
        other.last_seed = None
        return other

    def defaults(self) -> GenerationRequest:
        """The model's default request (see :func:`model_defaults`); seed ``-1`` = random."""
        return model_defaults(self.model)

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with a concrete seed (random for ``-1``) and size."""
        if not isinstance(request, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(request).__name__}")
        size = self.model.default_size
        return replace(request, seed=resolve_seed(request.seed, self.rng),
                       width=size if request.width is None else request.width,
                       height=size if request.height is None else request.height)

    def validate(self, request: GenerationRequest, *, controls: Mapping | None = None) -> list[str]:
        """Raise :class:`InvalidRequest` if ``request`` can't run; return warnings.
        A random seed (``-1``) is valid."""
        if isinstance(request, GenerationRequest) and request.seed in (None, RANDOM_SEED):
            request = replace(request, seed=0)
        _check_controls(controls)
        return self.engine.validate(self.prepare(request))

    def run(self, request: GenerationRequest, *, cancel: CancelToken | None = None,
            on_preview: PreviewCallback | None = None, on_progress: ProgressCallback | None = None,
            controls: Mapping | None = None, workbench: str = DEFAULT_WORKBENCH, hooks: RunHooks | None = None,
            cache: LatentCache | None = None, resume_from_step: int | None = None,
            start: StartLatents | None = None,
            postprocess: Callable[[list], list] | None = None) -> GenerateOutcome:
        """Generate ``request`` and save every image; see the module docstring.

        Other workbenches pass their technique as ``hooks`` (and ``controls``, the
        settings saved with each image: one mapping for the batch, or a list with
        one mapping per image); ``cache``/``resume_from_step`` are the
        engine's (re-render only the steps after ``resume_from_step``); ``start`` begins part-way from given
        latents (img2img); ``postprocess`` turns the decoded images into the ones saved and returned (e.g. an
        inpainting composite over the original pixels).

        Raises :class:`InvalidRequest` (nothing run) and :class:`Cancelled`
        (nothing saved: a cancel that arrives before saving starts discards the
        batch)."""
        t_start = time.perf_counter()
        # 1. concrete seed and size, then validate everything before any work
        request = self.prepare(request)
        controls = _check_controls(controls)
        if isinstance(controls, list) and len(controls) != request.batch_size:
            raise InvalidRequest(f"controls: got {len(controls)} per-image mappings for a batch of "
                                 f"{request.batch_size}", "controls")
        if not isinstance(workbench, str) or not workbench.strip():
            raise InvalidRequest(f"workbench must be a non-empty string, got {workbench!r}", "workbench")
        warnings = list(self.engine.validate(request, hooks))
        self.last_seed = request.seed

        # 2. generate, observing steps
        observer = _Observer(self.model, on_progress, on_preview, self.preview)
        try:
            callback = observer if (on_progress is not None or on_preview is not None) else None
            result = self.engine.generate(request, hooks=hooks, cancel=cancel, on_step=callback, cache=cache,
                                          resume_from_step=resume_from_step, start=start)
        finally:
            observer.close()
        if cancel is not None and cancel.cancelled:
            raise Cancelled("generation cancelled")
        warnings += [w for w in result.warnings if w not in warnings] + observer.errors
        if postprocess is not None:
            result.images = list(postprocess(list(result.images)))

        # 3. save each image with its settings and provenance
        t_save = time.perf_counter()
        saved = []
        if self.store is not None:
            scheduler = self._scheduler_info(request.sampler)
            duration = t_save - t_start
            for i, (image, seed) in enumerate(zip(result.images, result.seeds)):
                settings = GenerationSettings.from_request(
                    request, seed=seed, width=request.width, height=request.height,
                    model_name=display_name(self.model), batch_index=i, model_hash=self.model.weights_hash,
                    workbench=workbench, controls=controls[i] if isinstance(controls, list) else controls)
                provenance = Provenance.collect(
                    model_id=str(self.model.name), weights_hash=self.model.weights_hash,
                    scheduler=scheduler["class"], device=str(self.model.device), dtype=self.model.dtype,
                    duration_s=duration,
                    extra={"request": asdict(request), "batch_seeds": list(result.seeds),
                           "scheduler_config": scheduler["config"], "family": self.model.family,
                           "prediction_type": self.model.prediction_type, "warnings": list(warnings),
                           "timings": {k: round(v, 6) for k, v in result.timings.items()}})
                saved.append(self.store.save(image, settings, provenance))

        # 4. package
        now = time.perf_counter()
        timings = {**result.timings, "save": now - t_save, "total": now - t_start}
        return GenerateOutcome(images=tuple(result.images), saved=tuple(saved), seeds=tuple(result.seeds),
                               warnings=tuple(warnings), timings=MappingProxyType(timings), request=request,
                               previews=observer.previews)

    def _scheduler_info(self, sampler: str) -> dict[str, Any]:
        scheduler = make_scheduler(self.model.scheduler_config, sampler)
        config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
        return {"class": type(scheduler).__name__, "config": _json_safe(config)}


def _check_controls(controls: Mapping | list | None) -> Mapping | list:
    if controls is None:
        return {}
    if isinstance(controls, (list, tuple)):
        return [_check_controls(c) for c in controls]
    if not isinstance(controls, Mapping):
        raise InvalidRequest(f"controls must be a mapping, got {type(controls).__name__}", "controls")
    try:
        freeze_json(controls, what="controls")
    except ValueError as e:
        raise InvalidRequest(str(e), "controls") from None
    return controls


__all__ = [
    "DEFAULT_WORKBENCH", "RANDOM_SEED", "FileSaver", "GenerateController", "GenerateOutcome", "PreviewConfig",
    "Saver", "display_name", "model_defaults", "resolve_seed", "settings_from_image", "write_atomic",
]
