"""The Composition tab: parts with weights (AND / NOT), a per-stage timeline, a region canvas, blending, and
the monolithic prompt beside the composed one at the same seed. Widgets only; the work is
:class:`~studio.controllers.compose.CompositionController`'s. Per-user state lives in :class:`CompositionSession`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from html import escape
from typing import Any

import numpy as np

import gradio as gr

from studio.attributes.definitions import model_kind
from studio.composition import (
    BLEND_LABELS, BLEND_MODES, NUM_STAGES, REGION_MODES, STAGE_CFG, STAGE_SAMPLER, Region, StagePrompt,
)
from studio.controllers.compose import (
    BlendRequest, CompositionController, CompositionRequest, PromptPart, compose_prompt,
)
from studio.engine import SAMPLERS, GenerationRequest

from .errors import USER_ERRORS, status_html, unexpected_message, user_message
from .generate_tab import FormLimits, progress_html
from .streaming import RunSession, run_controls, stop_run, stream_outputs

N_PARTS = 4
N_STAGE_ROWS = 2
N_REGIONS = 3
STAGE_COLOURS = ("#4c78a8", "#f58518", "#54a24b")


class CompositionSession(RunSession):
    """One browser session's run state (never shared between sessions)."""


def parse_box(text: str, which: str) -> tuple[float, float, float, float]:
    """``"0, 0, 0.5, 1"`` -> four floats (x0, y0, x1, y1); a clear message otherwise."""
    pieces = [p for p in str(text or "").replace(";", ",").split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in pieces)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"{which}: box must be four fractions 'x0, y0, x1, y1' (0..1, origin top left), "
                         f"got {text!r}")
    return values  # type: ignore[return-value]


def box_from_drawing(editor_value: Any) -> tuple[float, float, float, float] | None:
    """The bounding box (fractions) of what was painted on the canvas, or None when nothing was."""
    if not isinstance(editor_value, dict):
        return None
    painted = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        arr = np.asarray(layer)
        alpha = arr[..., 3] > 0 if arr.ndim == 3 and arr.shape[-1] == 4 else arr.max(axis=-1) > 0 if arr.ndim == 3 \
            else arr > 0
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    ys, xs = np.nonzero(painted)
    h, w = painted.shape
    return (round(xs.min() / w, 3), round(ys.min() / h, 3), round((xs.max() + 1) / w, 3),
            round((ys.max() + 1) / h, 3))


def timeline_html(rows: list[dict]) -> str:
    """The 10 stages as a strip, in sampling order, each with its prompt and steps."""
    cells = []
    prompts = list(dict.fromkeys(r["prompt"] for r in rows if r["assigned"]))
    for r in rows:
        colour = STAGE_COLOURS[prompts.index(r["prompt"]) % len(STAGE_COLOURS)] if r["assigned"] else "#9e9e9e"
        steps = f"steps {r['steps'][0] + 1}-{r['steps'][-1] + 1}" if r["steps"] else "no steps"
        cells.append(f'<div class="studio-stage" style="background:{colour}" title="{escape(r["prompt"])}">'
                     f'<b>{r["stage"]}</b><br><small>{steps}</small><br><small>{escape(r["prompt"][:40])}</small>'
                     "</div>")
    return ('<div class="studio-timeline" id="compose_timeline_strip">' + "".join(cells) + "</div>"
            "<small>stage 1 = first, noisiest steps (layout) … stage 10 = last steps (detail)</small>")


class CompositionHandlers:
    """Event handlers (plain functions of form values, testable without a browser)."""

    def __init__(self, controller: CompositionController):
        self.controller = controller
        self.defaults = controller.defaults()
        self.limits = FormLimits.for_model(controller.model, self.defaults)
        # regions guide at weight x CFG; composable diffusion's reference guides each part at 7.5, and on Tiny World
        # (CFG 3) weight 1 left one of two half-image objects out about half the time (README, composition)
        self.region_weight = min(5.0, max(1.0, round(7.5 / self.defaults.cfg, 2)))

    # ------------------------------------------------------------------ form -> request

    def _base(self, negative, seed, steps, cfg, sampler) -> GenerationRequest:
        base = self.limits.fixed_seed_request(self.defaults, why="composed and monolithic share the noise", seed=seed,
                                              steps=steps, cfg=cfg, negative_prompt=negative)
        return replace(base, sampler=self.limits.check("sampler", sampler))

    @staticmethod
    def _parts(values: list) -> tuple[PromptPart, ...]:
        parts = []
        for i in range(N_PARTS):
            text, weight = values[2 * i], values[2 * i + 1]
            if str(text or "").strip():
                parts.append(PromptPart(str(text).strip(), float(weight)))
        if not parts:
            raise ValueError("write at least one part")
        return tuple(parts)

    @staticmethod
    def _stages(values: list) -> tuple[StagePrompt, ...]:
        stages = []
        for i in range(N_STAGE_ROWS):
            text, first, last = values[3 * i:3 * i + 3]
            if str(text or "").strip():
                stages.append(StagePrompt(str(text).strip(), int(first), int(last)))
        return tuple(stages)

    @staticmethod
    def _regions(use: bool, values: list, weight: float = 1.0) -> tuple[Region, ...]:
        if not use:
            return ()
        regions = []
        for i in range(N_REGIONS):
            text, box = values[2 * i], values[2 * i + 1]
            if str(text or "").strip():
                regions.append(Region(str(text).strip(), *parse_box(box, f"region {i + 1}"), weight=float(weight)))
        if not regions:
            raise ValueError("regions are on but no region has a prompt; write one or untick 'Use regions'")
        return tuple(regions)

    def request_from_form(self, negative, seed, steps, cfg, sampler, compare, use_regions, feather, region_mode,
                          region_weight, *rest) -> CompositionRequest:
        parts_v = list(rest[:2 * N_PARTS])
        stages_v = list(rest[2 * N_PARTS:2 * N_PARTS + 3 * N_STAGE_ROWS])
        regions_v = list(rest[2 * N_PARTS + 3 * N_STAGE_ROWS:])
        base = self._base(negative, seed, steps, cfg, sampler)
        parts = self._parts(parts_v)
        regions = self._regions(bool(use_regions), regions_v, region_weight)
        stages = self._stages(stages_v)
        if regions and len(parts) == 1 and parts[0].weight == 1:
            # regions take one global prompt: the single part, as written
            return CompositionRequest(replace(base, prompt=parts[0].text), regions=regions, feather=float(feather),
                                      region_mode=str(region_mode), stages=stages, compare=bool(compare))
        return CompositionRequest(base, parts=parts, regions=regions, feather=float(feather),
                                  region_mode=str(region_mode), stages=stages, compare=bool(compare))

    # ------------------------------------------------------------------ events

    def preview_prompt(self, *parts_values) -> str:
        """The prompt the parts make (shown under the parts as they are edited)."""
        try:
            return compose_prompt(self._parts(list(parts_values)))
        except (ValueError, TypeError):
            return ""

    def timeline(self, prompt_text, steps, sampler, *stage_values):
        try:
            base = replace(self.defaults, prompt=str(prompt_text or ""), steps=int(steps),
                           sampler=self.limits.check("sampler", sampler))
            rows = self.controller.timeline(base, self._stages(list(stage_values)))
        except USER_ERRORS as e:
            return status_html(user_message(e), "error")
        return timeline_html(rows)

    @staticmethod
    def stage_settings() -> tuple[str, float]:
        """(sampler, CFG) under which later stages' prompts still take hold (see ``studio.composition.stages``)."""
        return STAGE_SAMPLER, STAGE_CFG

    def compose(self, session: CompositionSession, *form):
        """Generator: yields (image, monolithic image, timeline, progress, status)."""
        session = session or CompositionSession()
        try:
            request = self.request_from_form(*form)
        except USER_ERRORS as e:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), status_html(user_message(e), "error")
            return

        def work(token, emit):
            return self.controller.compose(
                request, save=True, cancel=token, on_preview=lambda image, step, total: emit((image, step, total)),
                on_progress=lambda step, total: emit((None, step, total)))

        def on_events(batch):  # show the newest preview and the newest step, skip the rest
            frames = [image for image, _, _ in batch if image is not None]
            _, step, total = batch[-1]
            return frames[-1] if frames else gr.skip(), gr.skip(), gr.skip(), progress_html(step, total), gr.skip()

        t0 = time.perf_counter()
        out = yield from stream_outputs(session, work, "studio-compose", "compose", on_events,
                                        lambda progress, status: (gr.skip(), gr.skip(), gr.skip(), progress, status))
        if out is None:
            return
        took = time.perf_counter() - t0
        mono = out.comparison[0] if out.comparison else None
        rows = timeline_html(list(out.timeline)) if out.timeline else gr.skip()
        notes = "".join(f"\n{w}" for w in out.warnings)
        saved = f"; saved {len(out.saved)} image(s)" if out.saved else ""
        message = f"composed: {out.prompt}" + (f"  |  monolithic: {out.monolithic}" if mono is not None else "")
        yield (out.images[0], mono if mono is not None else None, rows, progress_html(1, 1, f"{took:.1f} s"),
               status_html(message + saved + notes, "warning" if out.warnings else "ok"))

    def stop(self, session: CompositionSession):
        return stop_run(session)

    def use_drawing(self, editor_value, target, *boxes):
        """Set the box of region ``target`` (1-based) from the canvas; returns the box textboxes and status."""
        box = box_from_drawing(editor_value)
        if box is None:
            return (*[gr.skip()] * N_REGIONS, status_html("nothing drawn yet: paint over the area of the region",
                                                          "warning"))
        k = int(target) - 1
        updates = [gr.skip()] * N_REGIONS
        updates[k] = ", ".join(f"{v:g}" for v in box)
        return (*updates, status_html(f"region {k + 1} box set to {updates[k]} from the drawing", "ok"))

    def blend(self, prompt_a, prompt_b, mix, switch_at, negative, seed, steps, cfg, sampler):
        """Returns (gallery, status)."""
        try:
            base = self._base(negative, seed, steps, cfg, sampler)
            t0 = time.perf_counter()
            out = self.controller.blend(BlendRequest(base, str(prompt_a or ""), str(prompt_b or ""), float(mix),
                                                     float(switch_at)), save=True)
            took = time.perf_counter() - t0
        except USER_ERRORS as e:
            return gr.skip(), status_html(user_message(e), "error")
        except Exception as e:  # noqa: BLE001
            return gr.skip(), status_html(unexpected_message(e, "blend"), "error")
        gallery = [(out.images[m], BLEND_LABELS[m]) for m in BLEND_MODES]
        return gallery, status_html(f"blend: {len(BLEND_MODES)} ways in one batched run ({took:.2f} s)", "ok")


def build_composition_tab(handlers: CompositionHandlers, state: gr.State) -> None:
    d = handlers.defaults
    tinyworld = model_kind(handlers.controller.model) == "tinyworld"
    part_defaults = ["a red circle", "a blue square", "", ""] if tinyworld else \
        ["a cozy cabin in a snowy forest", "northern lights", "", ""]
    with gr.Row():
        with gr.Column(scale=5):
            part_widgets = []
            with gr.Group():
                for i in range(N_PARTS):
                    with gr.Row():
                        text = gr.Textbox(value=part_defaults[i], label=f"Part {i + 1}", scale=4,
                                          elem_id=f"compose_part{i + 1}")
                        weight = gr.Slider(-2, 2, value=1.0, step=0.1, label="Weight (negative = NOT)", scale=3,
                                           elem_id=f"compose_weight{i + 1}")
                    part_widgets += [text, weight]
            composed = gr.Textbox(value=compose_prompt(tuple(PromptPart(t) for t in part_defaults if t)),
                                  label="Composed prompt (the prompt language: AND, NOT, :weight, (emphasis), "
                                        "[from:to:when], [a|b])", interactive=False, elem_id="compose_prompt")
            negative = gr.Textbox(label="Negative prompt", value=d.negative_prompt, elem_id="compose_negative")
            with gr.Row():
                seed = gr.Number(value=3, label="Seed", precision=0, elem_id="compose_seed")
                steps = gr.Slider(1, 150, value=d.steps, step=1, label="Steps", elem_id="compose_steps")
                cfg = gr.Slider(0, 30, value=d.cfg, step=0.5, label="CFG scale", elem_id="compose_cfg")
                sampler = gr.Dropdown(list(SAMPLERS), value=d.sampler, label="Sampler", elem_id="compose_sampler")
            compare = gr.Checkbox(value=True, label="Also render the monolithic prompt (same seed)",
                                  elem_id="compose_compare")
            with gr.Accordion("Per-stage prompts (timeline)", open=False):
                stage_widgets = []
                for i in range(N_STAGE_ROWS):
                    with gr.Row():
                        text = gr.Textbox(label=f"Stage prompt {i + 1}", scale=4, elem_id=f"compose_stage{i + 1}",
                                          placeholder="a circle at the top left" if tinyworld else "")
                        first = gr.Slider(1, NUM_STAGES, value=1 + 4 * i, step=1, label="from stage", scale=2,
                                          elem_id=f"compose_stage{i + 1}_from")
                        last = gr.Slider(1, NUM_STAGES, value=4 + 3 * i, step=1, label="to stage", scale=2,
                                         elem_id=f"compose_stage{i + 1}_to")
                    stage_widgets += [text, first, last]
                timeline = gr.HTML(handlers.timeline(composed.value, d.steps, d.sampler,
                                                     *[w.value for w in stage_widgets]),
                                   elem_id="compose_timeline")
                with gr.Row():
                    gr.Markdown(f"A later stage's prompt takes hold best under an ancestral sampler and stronger "
                                f"guidance: on Tiny World, layout in stages 1-4 and colour after it gave both in "
                                f"85% of 200 seeds with {STAGE_SAMPLER} at CFG {STAGE_CFG:g}, 60% with DPM++ 2M "
                                "at CFG 3.")
                    stage_settings = gr.Button(f"Use {STAGE_SAMPLER}, CFG {STAGE_CFG:g}", size="sm",
                                               elem_id="compose_stage_settings")
            with gr.Accordion("Regions", open=False):
                use_regions = gr.Checkbox(value=False, label="Use regions (part 1 is the global prompt)",
                                          elem_id="compose_use_regions")
                region_widgets = []
                region_boxes = []
                box_defaults = ["0, 0, 0.5, 1", "0.5, 0, 1, 1", "0, 0, 1, 0.5"]
                for i in range(N_REGIONS):
                    with gr.Row():
                        text = gr.Textbox(label=f"Region {i + 1} prompt", scale=3,
                                          elem_id=f"compose_region{i + 1}")
                        box = gr.Textbox(value=box_defaults[i], label="box x0, y0, x1, y1 (fractions)", scale=2,
                                         elem_id=f"compose_region{i + 1}_box")
                    region_widgets += [text, box]
                    region_boxes.append(box)
                feather = gr.Slider(0, 0.5, value=0.05, step=0.01, label="Feather (fraction of the image)",
                                    elem_id="compose_feather")
                region_mode = gr.Radio(list(REGION_MODES), value="add", label="Combine regions",
                                       info="add: each region adds its prompt's guidance inside its box (one scene); "
                                            "average: MultiDiffusion's average of whole-scene predictions",
                                       elem_id="compose_region_mode")
                region_weight = gr.Slider(0.1, 5, value=handlers.region_weight, step=0.1,
                                          label="Region weight (each region guides at weight x CFG)",
                                          elem_id="compose_region_weight")
                canvas = gr.ImageEditor(label="Draw a region: paint over its area, then press 'Use drawing'",
                                        type="numpy", image_mode="RGBA", canvas_size=(256, 256), height=300,
                                        sources=(), transforms=(), layers=False,
                                        brush=gr.Brush(colors=["#e53935"], default_size=24, color_mode="fixed"),
                                        elem_id="compose_canvas")
                with gr.Row():
                    target = gr.Dropdown([str(i + 1) for i in range(N_REGIONS)], value="1", label="for region",
                                         elem_id="compose_draw_target")
                    use_drawing = gr.Button("Use drawing", elem_id="compose_use_drawing")
            run, stop, progress, status = run_controls("compose", "Compose", "Write parts, set weights, Compose.")
        with gr.Column(scale=6):
            with gr.Row():
                image = gr.Image(label="Composed (live preview while it runs)", type="pil", format="png",
                                 interactive=False, elem_id="compose_image", height=300)
                mono = gr.Image(label="Monolithic prompt, same seed", type="pil", format="png", interactive=False,
                                elem_id="compose_mono", height=300)
            with gr.Accordion("Blend two concepts", open=False):
                with gr.Row():
                    blend_a = gr.Textbox(value="a red circle" if tinyworld else "a lion", label="Prompt A",
                                         elem_id="blend_a")
                    blend_b = gr.Textbox(value="a blue square" if tinyworld else "a tiger", label="Prompt B",
                                         elem_id="blend_b")
                with gr.Row():
                    mix = gr.Slider(0, 1, value=0.5, step=0.05, label="Interpolation (weight of B)",
                                    elem_id="blend_mix")
                    switch_at = gr.Slider(0, 1, value=0.5, step=0.05, label="Switch to B at (fraction of steps)",
                                          elem_id="blend_switch")
                blend = gr.Button("Blend", elem_id="blend_run")
                blend_gallery = gr.Gallery(label="A · interpolated · alternating · switch · B (same noise)",
                                           columns=5, height=170, elem_id="blend_gallery")
                blend_status = gr.HTML(elem_id="blend_status")

    gpu = dict(concurrency_limit=1, concurrency_id="gpu", show_progress="hidden")
    light = dict(concurrency_limit=None, concurrency_id="light", show_progress="hidden")
    form = [negative, seed, steps, cfg, sampler, compare, use_regions, feather, region_mode, region_weight,
            *part_widgets, *stage_widgets, *region_widgets]
    run.click(handlers.compose, inputs=[state, *form], outputs=[image, mono, timeline, progress, status], **gpu)
    stop.click(handlers.stop, inputs=[state], outputs=[status], **light)
    for w in part_widgets:
        w.change(handlers.preview_prompt, inputs=part_widgets, outputs=[composed], **light)
    for w in [composed, steps, sampler, *stage_widgets]:
        w.change(handlers.timeline, inputs=[composed, steps, sampler, *stage_widgets], outputs=[timeline], **light)
    stage_settings.click(handlers.stage_settings, outputs=[sampler, cfg], **light)
    use_drawing.click(handlers.use_drawing, inputs=[canvas, target, *region_boxes], outputs=[*region_boxes, status],
                      **light)
    blend.click(handlers.blend, inputs=[blend_a, blend_b, mix, switch_at, negative, seed, steps, cfg, sampler],
                outputs=[blend_gallery, blend_status], **gpu)
