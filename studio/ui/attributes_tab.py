"""The Attributes tab: subject-specific sliders wired to :class:`AttributesController` calls.

Dragging a slider re-renders continuously (Gradio's ``trigger_mode="always_last"``: the latest value wins and
nothing queues up) at draft quality (half the steps); releasing it renders at full quality. The image at the
slider's value is shown beside the same seed at zero. A sweep renders N values in one batched run and offers an
animated WebP. Directions can be learned in the background (progress, cancel, resume) and users can define their
own attributes; all per-user state lives in :class:`AttributesSession` inside ``gr.State``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr

from studio.attributes.definitions import AttributeDefinition
from studio.attributes.learning import DirectionLearner, ImageLearnSettings, LearnSettings
from studio.controllers.attributes import (
    AttributeRequest, AttributesController, SliderSession, SliderSetting, SweepRequest,
)
from studio.engine import GenerationRequest

from .errors import USER_ERRORS, status_html, unexpected_message, user_message
from .generate_tab import FormLimits

NONE = "(none)"
LEARN_STEPS = {"learned": LearnSettings().steps, "learned-images": ImageLearnSettings().steps}
METHOD_CHOICES = [("optimization-free", "naive"), ("learned", "learned"),
                  ("learned from example images", "learned-images"), ("prompt weight (baseline)", "weight")]
RENDER_OUTPUTS = ("image", "zero_image", "status")


@dataclass
class AttributesSession:
    """One browser session's slider state (never shared between sessions)."""

    full: SliderSession = field(default_factory=SliderSession)
    draft: SliderSession = field(default_factory=SliderSession)
    custom: list[AttributeDefinition] = field(default_factory=list)
    zero_images: dict = field(default_factory=dict)  # (prompt, seed, steps, cfg) -> image at zero (draft and full)
    last: tuple | None = None  # (AttributeRequest, image) of the last full render, for Save
    learner: DirectionLearner | None = None
    workdir: Path | None = None

    def __deepcopy__(self, memo):  # gr.State copies its initial value per session: start empty
        return AttributesSession()

    def folder(self) -> Path:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="studio-attributes-"))
        return self.workdir

    def close(self) -> None:
        if self.learner is not None:
            self.learner.cancel()


class AttributesHandlers:
    """Event handlers (plain functions of form values, testable without a browser)."""

    def __init__(self, controller: AttributesController):
        self.controller = controller
        self.defaults = controller.defaults()

    # ------------------------------------------------------------------ helpers

    def attribute_names(self, session: AttributesSession | None = None) -> list[str]:
        custom = [d.name for d in (session.custom if session else [])]
        return [d.name for d in self.controller.definitions()] + custom

    def _definition(self, session: AttributesSession, name: str) -> AttributeDefinition:
        for d in session.custom:
            if d.name == name:
                return d
        return self.controller.definition(name)

    def _base(self, prompt, seed, steps, cfg) -> GenerationRequest:
        """The form's values checked as the Generate tab checks them (a fixed seed: -1 is not allowed here)."""
        limits = FormLimits.for_model(self.controller.model, self.defaults)
        return limits.fixed_seed_request(self.defaults, why="the slider moves one picture", seed=seed, steps=steps,
                                         cfg=cfg, prompt=prompt)

    def _sliders(self, session, attr1, subject1, method1, value1, attr2, subject2, value2):
        sliders = [SliderSetting(self._definition(session, attr1), str(subject1 or "").strip(), float(value1),
                                 method1)]
        if attr2 and attr2 != NONE:
            sliders.append(SliderSetting(self._definition(session, attr2), str(subject2 or "").strip(),
                                         float(value2), method1 if method1 != "weight" else "naive"))
        return tuple(sliders)

    def _zero(self, session: AttributesSession, base: GenerationRequest):
        key = (base.prompt, base.negative_prompt, base.seed, base.steps, base.cfg)
        if key not in session.zero_images:
            if len(session.zero_images) >= 4:  # drafts and full renders alternate: keep a few
                session.zero_images.pop(next(iter(session.zero_images)))
            session.zero_images[key] = self.controller.render(AttributeRequest(base)).images[0]
        return session.zero_images[key]

    # ------------------------------------------------------------------ events

    def render(self, session, prompt, seed, steps, cfg, delay, attr1, subject1, method1, value1, attr2, subject2,
               value2, local=False, draft: bool = False):
        """Returns (image, zero image, status)."""
        session = session or AttributesSession()
        try:
            base = self._base(prompt, seed, steps, cfg)
            if draft:
                base = replace(base, steps=max(4, base.steps // 2))
            sliders = self._sliders(session, attr1, subject1, method1, value1, attr2, subject2, value2)
            request = AttributeRequest(base, sliders, float(delay), bool(local))
            t0 = time.perf_counter()
            outcome = self.controller.render(request, session=session.draft if draft else session.full)
            took = time.perf_counter() - t0
            zero = self._zero(session, base)
        except USER_ERRORS as e:
            return gr.skip(), gr.skip(), status_html(user_message(e), "error")
        except Exception as e:  # noqa: BLE001
            return gr.skip(), gr.skip(), status_html(unexpected_message(e, "render"), "error")
        if not draft:
            session.last = (request, outcome.images[0])
        what = ", ".join(f"{s.attribute.name if isinstance(s.attribute, AttributeDefinition) else s.attribute} "
                         f"on '{s.subject}' = {s.value:+.2f}" for s in sliders)
        reused = f", steps 1-{outcome.resumed_from} reused" if outcome.resumed_from else ""
        label = "draft" if draft else "done"
        return outcome.images[0], zero, status_html(f"{label}: {what} ({took:.2f} s{reused})", "ok")

    def render_draft(self, *args):
        return self.render(*args, draft=True)

    def sweep(self, session, prompt, seed, steps, cfg, delay, attr1, subject1, method1, attr2, subject2, value2,
              frames, local=False):
        """Returns (filmstrip gallery, animation file, status)."""
        session = session or AttributesSession()
        try:
            base = self._base(prompt, seed, steps, cfg)
            definition = self._definition(session, attr1)
            n = int(frames)
            if not 2 <= n <= 16:
                raise ValueError(f"frames must be in 2..16, got {n}")
            values = tuple(round(-definition.range + 2 * definition.range * i / (n - 1), 4) for i in range(n))
            swept, *others = self._sliders(session, attr1, subject1, method1, 0.0, attr2, subject2, value2)
            t0 = time.perf_counter()
            out = self.controller.sweep(SweepRequest(base, swept, values, tuple(others), float(delay), bool(local)))
            took = time.perf_counter() - t0
            path = session.folder() / f"sweep-{int(time.time() * 1000)}.webp"
            path.write_bytes(out.animation("webp"))
        except USER_ERRORS as e:
            return gr.skip(), gr.skip(), status_html(user_message(e), "error")
        except Exception as e:  # noqa: BLE001
            return gr.skip(), gr.skip(), status_html(unexpected_message(e, "sweep"), "error")
        gallery = [(frame, f"{v:+.2f}") for frame, v in zip(out.frames, values)]
        return gallery, str(path), status_html(f"sweep: {n} values of {definition.name} in one batched run "
                                               f"({took:.2f} s)", "ok")

    def save(self, session):
        session = session or AttributesSession()
        if session.last is None or self.controller.generator.store is None:
            return status_html("nothing to save yet: render first (release the slider or press Render)", "warning")
        request, _ = session.last
        try:
            out = self.controller.render(request, save=True)
        except USER_ERRORS as e:
            return status_html(user_message(e), "error")
        return status_html(f"saved {out.saved[0].path if hasattr(out.saved[0], 'path') else out.saved[0]}", "ok")

    def define(self, session, name, subject, positive, negative, rng):
        """Add a user attribute to this session; returns (session, dropdown 1, dropdown 2, status)."""
        session = session or AttributesSession()
        try:
            name = str(name or "").strip()
            if name in self.attribute_names(session):
                raise ValueError(f"an attribute named {name!r} exists already; pick another name")
            definition = AttributeDefinition(name, str(subject or "").strip(), str(positive or "").strip(),
                                             str(negative or "").strip(), float(rng),
                                             self.controller.definitions()[0].templates
                                             if self.controller.definitions() else ("{phrase}",))
        except (ValueError, TypeError) as e:
            return session, gr.skip(), gr.skip(), status_html(f"attribute not added: {e}", "error")
        session.custom.append(definition)
        names = self.attribute_names(session)
        return (session, gr.update(choices=names, value=name), gr.update(choices=[NONE] + names),
                status_html(f"added attribute {name!r} (this session only)", "ok"))

    def learn(self, session, attr1, subject1, steps, cfg, method1="learned"):
        """Start (or resume) learning the direction (from example images when that is the chosen direction,
        else the guidance-matched one); yields status lines while it trains."""
        session = session or AttributesSession()
        if session.learner is not None and session.learner.running:
            yield status_html("a direction is already being learned; cancel it first", "warning")
            return
        try:
            definition = self._definition(session, attr1)
            settings = ImageLearnSettings(steps=int(steps)) if method1 == "learned-images" \
                else LearnSettings(steps=int(steps))
            job = self.controller.learner(definition, str(subject1 or "").strip(), settings, cfg=float(cfg))
        except USER_ERRORS as e:
            yield status_html(user_message(e), "error")
            return
        session.learner = job.start()
        while job.running:
            p = job.progress
            loss = f", loss {p.loss:.4g}" if p.loss is not None else ""
            source = " from example images" if job.from_images else ""
            yield status_html(f"learning {definition.name} on '{job.subject}'{source}: {p.state} {p.step}/{p.total}"
                              f"{loss}{' · ' + p.message if p.message else ''}", "info")
            job.join(0.5)
        p = job.progress
        kind = {"done": "ok", "cancelled": "warning"}.get(p.state, "error")
        yield status_html(f"learning {p.state}: {p.message}", kind)

    def cancel_learning(self, session):
        if session is not None and session.learner is not None and session.learner.running:
            session.learner.cancel()
            return status_html("cancelling; the progress is kept and Learn resumes it", "warning")
        return status_html("nothing is being learned", "info")

    def slider_range(self, session, attr):
        try:
            r = self._definition(session or AttributesSession(), attr).range
        except USER_ERRORS:
            return gr.skip()
        return gr.update(minimum=-r, maximum=r)


def build_attributes_tab(handlers: AttributesHandlers, state: gr.State) -> None:
    ctl = handlers.controller
    d = handlers.defaults
    names = handlers.attribute_names()
    first = ctl.definitions()[0] if ctl.definitions() else None
    tinyworld = ctl.kind == "tinyworld"
    prompt_default = "a medium red circle and a medium blue square on a black background" if tinyworld \
        else "a photo of a person in a park"
    r1 = first.range if first else 2.0
    with gr.Row():
        with gr.Column(scale=5):
            prompt = gr.Textbox(label="Prompt", value=prompt_default, lines=2, elem_id="attr_prompt")
            with gr.Row():
                seed = gr.Number(value=3, label="Seed", precision=0, elem_id="attr_seed")
                steps = gr.Slider(1, 150, value=d.steps, step=1, label="Steps", elem_id="attr_steps")
                cfg = gr.Slider(0, 30, value=d.cfg, step=0.5, label="CFG scale", elem_id="attr_cfg")
            with gr.Group():
                with gr.Row():
                    attr1 = gr.Dropdown(names, value=first.name if first else None, label="Attribute",
                                        elem_id="attr_attribute")
                    subject1 = gr.Textbox(value=first.subject if first else "", label="Subject word",
                                          elem_id="attr_subject")
                    method1 = gr.Radio(METHOD_CHOICES, value="naive", label="Direction", elem_id="attr_method")
                value1 = gr.Slider(-r1, r1, value=0.0, step=0.05, label="Value (drag: live draft; release: full)",
                                   elem_id="attr_value")
            with gr.Accordion("Second slider", open=False):
                with gr.Row():
                    attr2 = gr.Dropdown([NONE] + names, value=NONE, label="Attribute", elem_id="attr_attribute2")
                    subject2 = gr.Textbox(value="square" if tinyworld else "person", label="Subject word",
                                          elem_id="attr_subject2")
                value2 = gr.Slider(-r1, r1, value=0.0, step=0.05, label="Value", elem_id="attr_value2")
            delay = gr.Slider(0, 0.9, value=0.0, step=0.05, label="Delay (fraction of steps without sliders; keeps "
                                                                   "the layout)", elem_id="attr_delay")
            local = gr.Checkbox(value=False, label="Keep the rest of the picture (local blending: only the subject "
                                                   "changes; the first render also draws a reference at zero, "
                                                   "~1.5x the time; later moves reuse it)",
                                elem_id="attr_local")
            with gr.Row():
                render = gr.Button("Render", variant="primary", elem_id="attr_render")
                save = gr.Button("Save image", elem_id="attr_save")
            status = gr.HTML(status_html("Pick a subject word of the prompt and drag the slider."),
                             elem_id="attr_status")
            with gr.Accordion("Learn a direction (background training; for the chosen direction: 'learned from "
                              "example images' learns from pictures, the others the 'learned' one)", open=False):
                learn_steps = gr.Slider(20, 3000, value=LEARN_STEPS["learned"], step=10, label="Training steps",
                                        elem_id="attr_learn_steps")
                with gr.Row():
                    learn = gr.Button("Learn / resume", elem_id="attr_learn")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="attr_learn_cancel")
                learn_status = gr.HTML(status_html("Learned directions are saved and reused."),
                                       elem_id="attr_learn_status")
            with gr.Accordion("Define your own attribute", open=False):
                with gr.Row():
                    new_name = gr.Textbox(label="Name", elem_id="attr_new_name")
                    new_subject = gr.Textbox(label="Subject word", elem_id="attr_new_subject")
                    new_range = gr.Number(value=2.0, label="Range", elem_id="attr_new_range")
                with gr.Row():
                    new_pos = gr.Textbox(label="Positive phrasing", placeholder="a huge {subject}",
                                         elem_id="attr_new_positive")
                    new_neg = gr.Textbox(label="Negative phrasing", placeholder="a tiny {subject}",
                                         elem_id="attr_new_negative")
                define = gr.Button("Add attribute", elem_id="attr_define")
        with gr.Column(scale=6):
            with gr.Row():
                image = gr.Image(label="At the slider's value", type="pil", format="png", interactive=False,
                                 elem_id="attr_image", height=300)
                zero_image = gr.Image(label="Same seed, slider at zero", type="pil", format="png",
                                      interactive=False, elem_id="attr_zero", height=300)
            with gr.Row():
                frames = gr.Slider(2, 16, value=9, step=1, label="Sweep frames", elem_id="attr_frames")
                sweep = gr.Button("Sweep", elem_id="attr_sweep")
            filmstrip = gr.Gallery(label="Sweep (one batched run, same noise)", columns=9, height=160,
                                   elem_id="attr_filmstrip")
            animation = gr.File(label="Animated WebP", elem_id="attr_animation")

    render_inputs = [state, prompt, seed, steps, cfg, delay, attr1, subject1, method1, value1, attr2, subject2, value2,
                     local]
    gpu = dict(concurrency_limit=1, concurrency_id="gpu", show_progress="hidden")
    light = dict(concurrency_limit=None, concurrency_id="light", show_progress="hidden")
    value1.change(handlers.render_draft, inputs=render_inputs, outputs=[image, zero_image, status],
                  trigger_mode="always_last", **gpu)
    value2.change(handlers.render_draft, inputs=render_inputs, outputs=[image, zero_image, status],
                  trigger_mode="always_last", **gpu)
    for event in (value1.release, value2.release, render.click):
        event(handlers.render, inputs=render_inputs, outputs=[image, zero_image, status], **gpu)
    sweep.click(handlers.sweep, inputs=[state, prompt, seed, steps, cfg, delay, attr1, subject1, method1, attr2,
                                        subject2, value2, frames, local],
                outputs=[filmstrip, animation, status], **gpu)
    save.click(handlers.save, inputs=[state], outputs=[status], **gpu)
    attr1.change(handlers.slider_range, inputs=[state, attr1], outputs=[value1], **light)
    attr2.change(handlers.slider_range, inputs=[state, attr2], outputs=[value2], **light)
    define.click(handlers.define, inputs=[state, new_name, new_subject, new_pos, new_neg, new_range],
                 outputs=[state, attr1, attr2, status], **light)
    # each way of learning has its own measured default length (README: 600 learned, 1500 from example images)
    method1.change(lambda m: gr.update(value=LEARN_STEPS.get(m, LEARN_STEPS["learned"])), inputs=[method1],
                   outputs=[learn_steps], **light)
    learn.click(handlers.learn, inputs=[state, attr1, subject1, learn_steps, cfg, method1], outputs=[learn_status],
                concurrency_limit=None, concurrency_id="learn", show_progress="hidden")
    cancel.click(handlers.cancel_learning, inputs=[state], outputs=[learn_status], **light)
