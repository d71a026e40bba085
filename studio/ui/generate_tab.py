"""The Generate tab: widgets wired to :class:`GenerateController` calls.

No diffusion logic lives here. :class:`GenerateHandlers` turns form values into
a request, runs the controller on a worker thread and streams what it reports
(x0 previews, step progress) back to the page; :func:`build_generate_tab`
creates the widgets and wires them to the handlers.

Handlers return plain tuples in the order given by the ``*_OUTPUTS`` constants
(``gr.skip()`` for outputs they leave alone), so tests can call them directly.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr

from studio.controllers.generate import settings_from_image
from studio.engine import SAMPLERS, Cancelled, CancelToken, GenerationRequest
from studio.engine.validate import MAX_BATCH, MAX_CFG, MAX_SEED, MAX_STEPS, size_rule
from studio.presets import Preset

from .errors import (
    USER_ERRORS, Notify, friendly_warning, gradio_warning, status_html, unexpected_message, user_message,
)
from .session import SessionState

FORM_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "sampler", "steps", "cfg", "seed", "width", "height", "batch_size",
)
GENERATE_OUTPUTS: tuple[str, ...] = ("preview", "progress", "gallery", "status", "generate", "stop", "state")
FORM_OUTPUTS: tuple[str, ...] = FORM_FIELDS + ("status",)

RANDOM_SEED = -1


def skip() -> Any:
    return gr.skip()


# ----------------------------------------------------------------------------- form limits


@dataclass(frozen=True)
class FormLimits:
    """What the form allows for the loaded model (widget ranges and checks)."""

    size_multiple: int
    min_side: int
    max_side: int
    default_width: int
    default_height: int
    max_steps: int = MAX_STEPS
    max_cfg: float = MAX_CFG
    max_batch: int = MAX_BATCH
    max_seed: int = MAX_SEED

    @classmethod
    def for_model(cls, model, defaults: GenerationRequest) -> "FormLimits":
        rule = size_rule(model)
        return cls(size_multiple=rule.multiple, min_side=rule.minimum, max_side=rule.maximum,
                   default_width=defaults.width or model.default_size,
                   default_height=defaults.height or model.default_size)

    def check(self, name: str, value: Any) -> Any:
        """``value`` for form field ``name``, or raise ``ValueError`` saying what is allowed."""
        if name in ("prompt", "negative_prompt"):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be text, got {type(value).__name__}")
            return value
        if name == "sampler":
            if value not in SAMPLERS:
                raise ValueError(f"unknown sampler {value!r}; allowed: {', '.join(SAMPLERS)}")
            return value
        if name == "cfg":
            number = _number("cfg", value)
            if not 0 <= number <= self.max_cfg:
                raise ValueError(f"cfg must be in 0..{self.max_cfg:g}, got {number:g}")
            return number
        ranges = {
            "steps": (1, self.max_steps, ""),
            "seed": (RANDOM_SEED, self.max_seed, " (-1 = random)"),
            "batch_size": (1, self.max_batch, ""),
            "width": (self.min_side, self.max_side, ""),
            "height": (self.min_side, self.max_side, ""),
        }
        lo, hi, note = ranges[name]
        number = _whole(name, value)
        if name in ("width", "height"):
            if not lo <= number <= hi or number % self.size_multiple:
                raise ValueError(f"{name} must be a multiple of {self.size_multiple} in {lo}..{hi} "
                                 f"for this model, got {number}")
        elif not lo <= number <= hi:
            raise ValueError(f"{name} must be a whole number in {lo}..{hi}{note}, got {number}")
        return number

    def fixed_seed_request(self, defaults: GenerationRequest, *, why: str, seed: Any, steps: Any, cfg: Any,
                           **texts: Any) -> GenerationRequest:
        """``defaults`` with the form's seed, steps, cfg and texts (prompt, negative_prompt) checked, batch 1.

        For workbenches that compare pictures of one noise: the seed must be fixed; ``why`` says why."""
        number = self.check("seed", seed)
        if number < 0:
            raise ValueError(f"seed must be a fixed number (0 or more) so {why}")
        checked = {name: self.check(name, value or "") for name, value in texts.items()}
        return replace(defaults, seed=number, steps=self.check("steps", steps), cfg=self.check("cfg", cfg),
                       batch_size=1, **checked)


def _number(name: str, value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{name} is empty; enter a number")
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _whole(name: str, value: Any) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


# ----------------------------------------------------------------------------- html bits


def progress_html(step: int, total: int, note: str = "") -> str:
    total = max(1, int(total))
    step = max(0, min(int(step), total))
    label = f"step {step}/{total}" + (f" · {escape(note)}" if note else "")
    return (f'<div class="studio-progress" data-step="{step}" data-total="{total}">'
            f'<progress value="{step}" max="{total}"></progress> <span>{label}</span></div>')


def idle_progress_html(note: str = "idle") -> str:
    return f'<div class="studio-progress" data-step="0" data-total="0"><span>{escape(note)}</span></div>'


# ----------------------------------------------------------------------------- adapters


def settings_dict(obj: Any) -> tuple[dict[str, Any], list[str]]:
    """Form fields from what the controller returns for "load settings".

    Accepts a ``GenerationRequest`` (or any dataclass), an object with
    ``request_fields()`` (``ParsedSettings``), a mapping, or a ``(value,
    warnings)`` pair; unknown keys are dropped."""
    notes: list[str] = []
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], (list, tuple)):
        obj, extra = obj
        notes.extend(str(n) for n in extra)
    if hasattr(obj, "request_fields") and callable(obj.request_fields):
        values = dict(obj.request_fields())
    elif is_dataclass(obj) and not isinstance(obj, type):
        values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    elif isinstance(obj, dict):
        values = dict(obj)
    else:
        values = {name: getattr(obj, name) for name in FORM_FIELDS if hasattr(obj, name)}
        if not values and hasattr(obj, "request"):
            return settings_dict(obj.request)
    for key in ("warnings", "notes"):
        extra = getattr(obj, key, None)
        if isinstance(extra, (list, tuple)):
            notes.extend(str(n) for n in extra)
    return {k: v for k, v in values.items() if k in FORM_FIELDS}, notes


# ----------------------------------------------------------------------------- handlers


class GenerateHandlers:
    """Event handlers of the Generate tab (one instance per app, shared read-only).

    ``controller`` is a :class:`~studio.controllers.generate.GenerateController`;
    ``notify`` shows a message to the user (``gr.Warning`` in the app)."""

    def __init__(self, controller, model, *, presets: Sequence[Preset] = (), presets_error: str | None = None,
                 notify: Notify = gradio_warning, frame_interval: float = 0.1):
        self.controller = controller
        self.limits = FormLimits.for_model(model, controller.defaults())
        self.presets = list(presets)
        self.presets_error = presets_error
        self.notify = notify
        self.frame_interval = frame_interval

    # ------------------------------------------------------------------ form

    def defaults(self) -> dict[str, Any]:
        """The form's initial values: the controller's defaults, sizes filled in."""
        values = asdict(self.controller.defaults())
        values["width"] = values.get("width") or self.limits.default_width
        values["height"] = values.get("height") or self.limits.default_height
        return {name: values[name] for name in FORM_FIELDS}

    def request_from_form(self, *form: Any) -> GenerationRequest:
        """A request from the form values (in ``FORM_FIELDS`` order); ``ValueError`` on bad input.

        A random seed (-1) is resolved here so the seed shown is the seed used."""
        if len(form) != len(FORM_FIELDS):
            raise ValueError(f"expected {len(FORM_FIELDS)} form values, got {len(form)}")
        values = {}
        for name, value in zip(FORM_FIELDS, form):
            if name in ("prompt", "negative_prompt") and value is None:
                value = ""
            values[name] = self.limits.check(name, value)
        return self.controller.prepare(replace(self.controller.defaults(), **values))

    def form_updates(self, values: dict[str, Any], notes: list[str] | None = None) -> tuple[tuple, list[str]]:
        """``gr.update``s for the form fields in ``values`` (others skipped) and the
        notes about values this model cannot use (those fields keep their value)."""
        notes = list(notes or [])
        updates = []
        for name in FORM_FIELDS:
            if name not in values or values[name] is None:
                updates.append(skip())
                continue
            try:
                updates.append(gr.update(value=self.limits.check(name, values[name])))
            except ValueError as e:
                notes.append(f"kept the current {name}: {e}")
                updates.append(skip())
        return tuple(updates), notes

    # ------------------------------------------------------------------ generate

    def _generate_out(self, **values: Any) -> tuple:
        return tuple(values.get(name, skip()) for name in GENERATE_OUTPUTS)

    def _idle(self, session: SessionState, **values: Any) -> tuple:
        values.setdefault("generate", gr.update(interactive=True))
        values.setdefault("stop", gr.update(interactive=False))
        return self._generate_out(state=session, **values)

    def generate(self, session: SessionState, *form: Any) -> Iterator[tuple]:
        """Generator: yields ``GENERATE_OUTPUTS`` tuples; previews while running, then the result."""
        # 1. one run per browser session; check the form before any work
        if session.running:
            message = "A run is already going in this tab: press Stop or wait for it to finish."
            self.notify(message)
            yield self._generate_out(status=status_html(message, "warning"))
            return
        try:
            request = self.request_from_form(*form)
            early_warnings = [friendly_warning(str(w)) for w in self.controller.validate(request)]
        except USER_ERRORS as e:
            message = user_message(e, "Cannot generate")
            self.notify(message)
            yield self._idle(session, status=status_html(message, "error"))
            return
        for w in early_warnings:  # e.g. a prompt longer than the text encoder reads
            self.notify(w)

        # 2. the controller runs on a worker thread; it reports through a queue
        token = CancelToken()
        session.cancel = token
        events: queue.Queue = queue.Queue()

        def on_preview(image, step, total):
            events.put(("preview", image, step, total))

        def on_progress(step, total):
            events.put(("progress", step, total))

        def work():
            try:
                outcome = self.controller.run(request, cancel=token, on_preview=on_preview, on_progress=on_progress)
                events.put(("done", outcome))
            except BaseException as e:  # noqa: BLE001 - reported to the page below
                events.put(("error", e))

        worker = threading.Thread(target=work, name="studio-generate", daemon=True)
        total = request.steps
        step = 0
        starting = "\n".join([f"Generating {request.batch_size} image(s), seed {request.seed}…"]
                             + [f"Warning: {w}" for w in early_warnings])
        # 3. stream: keep only the newest frame, at most one update per frame_interval
        final = None
        try:
            yield self._generate_out(
                progress=progress_html(0, total, "starting"), state=session,
                status=status_html(starting, "warning" if early_warnings else "info"),
                generate=gr.update(interactive=False), stop=gr.update(interactive=True))
            worker.start()
            frame, dirty, last_sent, announced = None, False, 0.0, False
            while final is None:
                try:
                    items = [events.get(timeout=max(0.02, self.frame_interval / 2))]  # never spin
                except queue.Empty:
                    items = []
                while True:
                    try:
                        items.append(events.get_nowait())
                    except queue.Empty:
                        break
                for item in items:
                    if item[0] == "preview":
                        frame, step, total, dirty = item[1], max(step, int(item[2])), int(item[3]), True
                    elif item[0] == "progress":
                        step, total, dirty = max(step, int(item[1])), int(item[2]), True
                    else:
                        final = item
                now = time.monotonic()
                if token.cancelled and not announced:  # also when the stop landed in this same drain
                    announced = True
                    yield self._generate_out(status=status_html(f"Stopping at step {step}/{total}…", "warning"),
                                             stop=gr.update(interactive=False))
                if final is None and dirty and now - last_sent >= self.frame_interval:
                    yield self._generate_out(preview=frame if frame is not None else skip(),
                                             progress=progress_html(step, total))
                    frame, dirty, last_sent = None, False, now
        finally:
            if final is None:  # the page went away mid-run: stop the worker too
                token.cancel()
            session.cancel = None

        # 4. the result
        kind, payload = final
        if kind == "done":
            yield self._finished(session, payload, total, already_shown=early_warnings)
            return
        if isinstance(payload, Cancelled) or (token.cancelled and not isinstance(payload, USER_ERRORS)):
            message = f"Stopped at step {step}/{total}; nothing was saved."
            yield self._idle(session, progress=progress_html(step, total, "stopped"),
                             status=status_html(message, "warning"))
            return
        if isinstance(payload, USER_ERRORS):
            message = user_message(payload, "Cannot generate")
        else:
            message = unexpected_message(payload, "Generation")
        self.notify(message)
        yield self._idle(session, progress=idle_progress_html("failed"), status=status_html(message, "error"))

    def _finished(self, session: SessionState, outcome, total: int, already_shown: Sequence[str] = ()) -> tuple:
        images = list(getattr(outcome, "images", []) or [])
        saved = list(getattr(outcome, "saved", []) or [])
        seeds = list(getattr(outcome, "seeds", []) or [])
        warnings = [friendly_warning(str(w)) for w in (getattr(outcome, "warnings", []) or [])]
        timings = dict(getattr(outcome, "timings", {}) or {})
        items = []
        for i, image in enumerate(images):
            seed = seeds[i] if i < len(seeds) else None
            caption = f"seed {seed}" if seed is not None else f"image {i + 1}"
            path = getattr(saved[i], "path", None) if i < len(saved) else None
            items.append((str(path), caption) if path is not None else (image, caption + " (not saved)"))
        session.add_images(items)
        if seeds:
            session.last_seed = seeds[0]
        for w in warnings:
            if w not in already_shown:
                self.notify(w)
        seconds = timings.get("total")
        lines = [f"Done: {len(images)} image(s), seed {', '.join(map(str, seeds)) or '?'}"
                 + (f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else "")
                 + (f"; saved {saved[0].path}" if saved and len(saved) == 1 else
                    f"; saved {len(saved)} files in {Path(saved[0].path).parent}" if saved else "; not saved")]
        lines += [f"Warning: {w}" for w in warnings]
        return self._idle(session, preview=images[0] if images else skip(),
                          progress=progress_html(total, total, "done"), gallery=list(session.gallery),
                          status=status_html("\n".join(lines), "warning" if warnings else "ok"))

    def stop(self, session: SessionState) -> Any:
        """Cancel this session's run (the engine stops before its next step).

        Returns the update for the Stop button (disabled at once). The running
        generator reports "Stopping…" and then "Stopped at step k/N" itself, so
        the status line has a single writer and no stale message can win."""
        if session.cancel is not None:
            session.cancel.cancel()
        return gr.update(interactive=False)

    # ------------------------------------------------------------------ seed

    def reuse_seed(self, session: SessionState) -> Any:
        """The seed of this session's last finished run (for the seed field)."""
        if session.last_seed is None:
            self.notify("No finished run in this session yet: generate once, then reuse its seed.")
            return skip()
        return session.last_seed

    @staticmethod
    def random_seed() -> int:
        return RANDOM_SEED

    # ------------------------------------------------------------------ settings from images and presets

    def load_settings(self, file: Any) -> tuple:
        """``FORM_OUTPUTS`` from an uploaded PNG (studio or A1111 metadata)."""
        if not file:
            return tuple(skip() for _ in FORM_OUTPUTS)
        path = getattr(file, "name", file)
        name = Path(str(path)).name
        try:
            result = settings_from_image(path)
            values, notes = settings_dict(result)
        except USER_ERRORS as e:
            message = user_message(e, f"Cannot load settings from {name}")
            self.notify(message)
            return tuple(skip() for _ in FORM_FIELDS) + (status_html(message, "error"),)
        except Exception as e:  # noqa: BLE001 - never a traceback in the page
            message = unexpected_message(e, f"Loading settings from {name}")
            self.notify(message)
            return tuple(skip() for _ in FORM_FIELDS) + (status_html(message, "error"),)
        values.setdefault("batch_size", 1)
        return self._restore(values, notes, f"Settings loaded from {name}")

    def _restore(self, values: dict[str, Any], notes: list[str], headline: str) -> tuple:
        updates, notes = self.form_updates(values, notes)
        for note in notes:
            self.notify(note)
        text = "\n".join([headline] + notes)
        return updates + (status_html(text, "warning" if notes else "ok"),)

    def apply_example(self, index: Any) -> tuple:
        """``FORM_OUTPUTS`` for example ``index``: model defaults overlaid with the preset."""
        try:
            preset = self.presets[int(index)]
        except (TypeError, ValueError, IndexError):
            message = f"No example {index!r}; choose one of the {len(self.presets)} listed."
            self.notify(message)
            return tuple(skip() for _ in FORM_FIELDS) + (status_html(message, "error"),)
        values = {**self.defaults(), "batch_size": 1, **preset.settings()}
        return self._restore(values, [], f"Example loaded: {preset.name}")

    def example_samples(self) -> list[list[str]]:
        return [[p.name, p.prompt] for p in self.presets]


# ----------------------------------------------------------------------------- widgets


@dataclass
class GenerateTab:
    """The components other tabs wire to (form fields in ``FORM_FIELDS`` order)."""

    form: list
    preview: Any
    progress: Any
    gallery: Any
    status: Any
    generate: Any
    stop: Any


def build_generate_tab(handlers: GenerateHandlers, state: gr.State) -> GenerateTab:
    """Create the Generate tab's widgets (inside an open ``gr.Tab``) and wire them."""
    d, lim = handlers.defaults(), handlers.limits
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=360):
            prompt = gr.Textbox(label="Prompt", value=d["prompt"], lines=2, max_lines=6, elem_id="prompt",
                                placeholder="e.g. a large red circle at the top left on a black background")
            negative = gr.Textbox(label="Negative prompt", value=d["negative_prompt"], lines=1, max_lines=4,
                                  elem_id="negative_prompt", placeholder="what to steer away from")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False, scale=1)
            status = gr.HTML(status_html("Ready."), elem_id="status")
            with gr.Group():
                with gr.Row():
                    sampler = gr.Dropdown(list(SAMPLERS), value=d["sampler"], label="Sampler", elem_id="sampler")
                    steps = gr.Slider(1, lim.max_steps, value=d["steps"], step=1, label="Steps", elem_id="steps")
                    cfg = gr.Slider(0, lim.max_cfg, value=d["cfg"], step=0.5, label="CFG scale", elem_id="cfg")
                with gr.Row():
                    width = gr.Slider(lim.min_side, lim.max_side, value=d["width"], step=lim.size_multiple,
                                      label="Width", elem_id="width")
                    height = gr.Slider(lim.min_side, lim.max_side, value=d["height"], step=lim.size_multiple,
                                       label="Height", elem_id="height")
                    batch = gr.Slider(1, lim.max_batch, value=d["batch_size"], step=1, label="Batch size",
                                      elem_id="batch_size")
                with gr.Row(equal_height=True):
                    # no min/max here: the handler's message says what is allowed (-1 = random)
                    seed = gr.Number(value=d["seed"], label="Seed (-1 = random)", precision=0, elem_id="seed",
                                     scale=3)
                    random_seed = gr.Button("Random", elem_id="seed_random", scale=1, size="sm")
                    reuse_seed = gr.Button("Reuse last", elem_id="seed_reuse", scale=1, size="sm")
            if handlers.presets:
                examples = gr.Dataset(components=["textbox", "textbox"], headers=["Example", "Prompt"],
                                      samples=handlers.example_samples(), type="index", label="Examples",
                                      elem_id="examples", samples_per_page=12, layout="table")
            else:
                examples = None
                if handlers.presets_error:
                    gr.HTML(status_html(f"Examples unavailable: {handlers.presets_error}", "error"))
            settings_file = gr.File(label="Load settings from image (studio or A1111 PNG)", file_count="single",
                                    type="filepath", elem_id="settings_file", height=90)
        with gr.Column(scale=2, min_width=300):
            preview = gr.Image(label="Preview", type="pil", format="png", interactive=False, elem_id="preview",
                               height=340, buttons=["download", "fullscreen"])
            progress = gr.HTML(idle_progress_html(), elem_id="progress")
            gallery = gr.Gallery(label="This session's images", elem_id="gallery", columns=5, height=300,
                                 object_fit="contain", format="png", interactive=False, fit_columns=False)

    form = [prompt, negative, sampler, steps, cfg, seed, width, height, batch]
    # model-bound: one queue for every session ("gpu", one at a time); light events
    # are queued too (gr.Warning needs the queue) but never wait behind a run
    light = dict(concurrency_limit=None, concurrency_id="light", show_progress="hidden")
    generate.click(handlers.generate, inputs=[state, *form],
                   outputs=[preview, progress, gallery, status, generate, stop, state],
                   concurrency_limit=1, concurrency_id="gpu", show_progress="minimal",
                   show_progress_on=[progress], api_name="generate")
    stop.click(handlers.stop, inputs=[state], outputs=[stop], **light, api_name="stop")
    random_seed.click(handlers.random_seed, outputs=[seed], **light, api_visibility="undocumented")
    reuse_seed.click(handlers.reuse_seed, inputs=[state], outputs=[seed], **light, api_visibility="undocumented")

    def load_and_clear(file):  # clearing the upload box lets the next file be dropped right away
        return (*handlers.load_settings(file), None)

    settings_file.upload(load_and_clear, inputs=[settings_file], outputs=[*form, status, settings_file], **light,
                         api_name="load_settings")
    if examples is not None:
        examples.click(handlers.apply_example, inputs=[examples], outputs=[*form, status], **light,
                       api_visibility="undocumented")
    return GenerateTab(form=form, preview=preview, progress=progress, gallery=gallery, status=status,
                       generate=generate, stop=stop)
