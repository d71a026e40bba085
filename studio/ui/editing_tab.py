"""The Editing tab: img2img, inpainting with a painted mask, outpainting, prompt-to-prompt, closed-form concept edits
of the model. Widgets only; the work is :class:`~studio.controllers.edit.EditingController`'s. Per-user state lives in
:class:`EditingSession`: a concept edit is a model copy owned by that session (no other session ever sees it).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import gradio as gr

from studio.attributes.definitions import model_kind
from studio.controllers.edit import (
    EditedModel, EditingController, Img2ImgRequest, InpaintRequest, InversionOutcome, InversionRequest,
    OutpaintRequest, PromptToPromptRequest,
)
from studio.editing.concepts import DEFAULT_STRENGTH, METHOD_NAMES, ConceptEditSpec, parse_concepts, parse_edits
from studio.editing import SIDES
from studio.engine import SAMPLERS

from .errors import USER_ERRORS, status_html, user_message
from .generate_tab import FormLimits, progress_html
from .streaming import RunSession, run_controls, stop_run, stream_outputs

MODES = ("inpaint", "img2img", "outpaint")
EDITOR_SIDE = 256  # small images are shown enlarged (nearest) so a brush can paint them


@dataclass
class EditingSession(RunSession):
    """One browser session's run state and its concept-edited model copy (never shared between sessions)."""

    edited: EditedModel | None = None
    inverted: InversionOutcome | None = None  # the input image's last inversion (for prompt-to-prompt on it)


def enlarged(image: Image.Image) -> Image.Image:
    k = max(1, math.ceil(EDITOR_SIDE / max(1, min(image.size))))
    return image.resize((image.width * k, image.height * k), Image.NEAREST) if k > 1 else image


def mask_picture(mask, size: tuple[int, int]) -> Image.Image:
    """A latent-grid 0..1 mask ``(h, w)`` as a black-and-white picture of the image's ``size`` (white = edited)."""
    pixels = (np.asarray(mask.float().cpu().numpy()).clip(0, 1) * 255).astype(np.uint8)
    return Image.fromarray(pixels, "L").resize(size, Image.NEAREST).convert("RGB")


def painted_mask(editor_value: Any) -> np.ndarray | None:
    """The union of the painted layers' alpha as floats in [0, 1] (editor resolution), or None if nothing painted."""
    if not isinstance(editor_value, dict):
        return None
    alpha = None
    for layer in editor_value.get("layers") or []:
        a = np.asarray(layer)
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[..., 3].astype(np.float32) / 255.0
            alpha = a if alpha is None else np.maximum(alpha, a)
    if alpha is None or float(alpha.max()) <= 0:
        return None
    return alpha


def streamed(session, work, name: str, context: str, on_events):
    """:func:`stream_outputs` for this tab's handlers, which yield (output, progress, status)."""
    return stream_outputs(session, work, name, context, on_events,
                          lambda progress, status: (gr.skip(), progress, status))


class EditingHandlers:
    """Event handlers (plain functions of form values, testable without a browser)."""

    def __init__(self, controller: EditingController):
        self.controller = controller
        self.defaults = controller.defaults()
        self.tinyworld = model_kind(controller.model) == "tinyworld"

    def to_editor(self, image):
        """Show the input in the mask editor (enlarged when small), nothing painted."""
        if image is None:
            return None
        big = enlarged(image.convert("RGB"))
        return {"background": big, "layers": [], "composite": big}

    def scene(self, seed):
        """A drawn Tiny World scene to edit (ground truth you can check)."""
        from studio.tinyworld.scenes import SceneSpec, generate_scene

        try:
            number = int(seed)
        except (TypeError, ValueError):
            number = 0
        image = generate_scene(abs(number), SceneSpec(n_objects=1)).image
        return image, self.to_editor(image)

    def request(self, mode, image, editor, prompt, negative, seed, steps, cfg, sampler, strength, feather, side,
                pixels):
        if image is None:
            raise ValueError("upload an input image first" + (" (or draw a Tiny World scene)" if self.tinyworld
                                                               else ""))
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        limits = FormLimits.for_model(self.controller.model, self.defaults)
        base = limits.fixed_seed_request(self.defaults, why="an edit can be repeated and compared", seed=seed,
                                         steps=steps, cfg=cfg, prompt=prompt, negative_prompt=negative)
        base = replace(base, sampler=limits.check("sampler", sampler))
        image = image.convert("RGB")
        if mode == "img2img":
            return Img2ImgRequest(base, image, float(strength))
        if mode == "outpaint":
            return OutpaintRequest(base, image, str(side), int(pixels), float(feather))
        mask = painted_mask(editor)
        if mask is None:
            raise ValueError("paint over the region to repaint in the mask editor first")
        return InpaintRequest(base, image, mask, float(feather), float(strength))

    def controller_for(self, session: EditingSession | None, use_edited) -> EditingController:
        """The shared controller, or one on the session's concept-edited copy when it has one and it is wanted."""
        edited = session.edited if session is not None and use_edited else None
        return self.controller.on_edited(edited)

    def run(self, session: EditingSession, use_edited, *form):
        """Generator: yields (result image, progress, status)."""
        session = session if session is not None else EditingSession()
        try:
            request = self.request(*form)
        except USER_ERRORS as e:
            yield gr.skip(), gr.skip(), status_html(user_message(e), "error")
            return
        controller = self.controller_for(session, use_edited)
        method = {Img2ImgRequest: controller.img2img, InpaintRequest: controller.inpaint,
                  OutpaintRequest: controller.outpaint}[type(request)]

        def work(token, emit):
            return method(request, cancel=token, on_preview=lambda im, step, total: emit((im, step, total)),
                          on_progress=lambda step, total: emit((None, step, total)))

        def on_events(batch):  # the newest preview and step only
            frames = [image for image, _, _ in batch if image is not None]
            return frames[-1] if frames else gr.skip(), progress_html(batch[-1][1], batch[-1][2]), gr.skip()

        t0 = time.perf_counter()
        out = yield from streamed(session, work, "studio-edit", "edit", on_events)
        if out is None:
            return
        saved = f"; saved {getattr(out.saved[0], 'relative_path', out.saved[0])}" if out.saved else ""
        on = " on the concept-edited model" if controller is not self.controller else ""
        yield (out.images[0], progress_html(1, 1, f"{time.perf_counter() - t0:.1f} s"),
               status_html(f"{type(request).__name__.removesuffix('Request').lower()} done{on} "
                           f"({out.request.width}x{out.request.height}, seed {out.request.seed}){saved}", "ok"))

    def invert(self, session: EditingSession, use_edited, image, prompt, negative, seed, steps, cfg, null_text,
               inner_steps):
        """Generator: yields (reconstruction, progress, status); keeps the inversion in the session."""
        session = session if session is not None else EditingSession()
        try:
            if image is None:
                raise ValueError("upload an input image to invert first")
            limits = FormLimits.for_model(self.controller.model, self.defaults)
            base = limits.fixed_seed_request(self.defaults, why="an inversion can be repeated", seed=seed,
                                             steps=steps, cfg=cfg, prompt=prompt, negative_prompt=negative)
            request = InversionRequest(base, image.convert("RGB"), bool(null_text), int(inner_steps))
        except USER_ERRORS as e:
            yield gr.skip(), gr.skip(), status_html(user_message(e), "error")
            return
        controller = self.controller_for(session, use_edited)

        def work(token, emit):
            return controller.invert(request, cancel=token, on_progress=lambda step, total: emit((step, total)))

        value = yield from streamed(session, work, "studio-invert", "inversion",
                                    lambda batch: (gr.skip(), progress_html(*batch[-1], "null-text"), gr.skip()))
        if value is None:
            return
        session.inverted = value
        how = f"null-text at CFG {value.request.cfg:g}" if null_text else "CFG 1"
        yield (value.reconstruction, progress_html(1, 1, f"{value.timings['total']:.1f} s"),
               status_html(f"reconstruction PSNR {value.psnr_db:.2f} dB ({value.request.steps} DDIM steps, {how}); "
                           "prompt-to-prompt can now edit this image", "ok"))

    def prompt_to_prompt(self, session, use_edited, prompt, target, negative, seed, steps, cfg, sampler, cross,
                         self_fraction, reweight_word, reweight_factor, blend, on_inverted=False, blend_words="",
                         blend_mask="auto", mask_grow="auto"):
        """Generator: yields (before/after gallery, progress, status) of a prompt-to-prompt edit (of the inverted
        input image when asked); the tab's Stop stops it."""
        session = session if session is not None else EditingSession()
        try:
            inverted = session.inverted if on_inverted else None
            if on_inverted and inverted is None:
                raise ValueError("invert the input image first (Invert, under 'Invert a real image')")
            limits = FormLimits.for_model(self.controller.model, self.defaults)
            base = limits.fixed_seed_request(self.defaults, why="source and edit share the noise", seed=seed,
                                             steps=steps, cfg=cfg, prompt=prompt, negative_prompt=negative)
            base = replace(base, sampler=limits.check("sampler", sampler))
            word = str(reweight_word or "").strip()
            reweight = ((word, float(reweight_factor)),) if word and float(reweight_factor) != 1.0 else ()
            words = tuple(w.strip() for w in str(blend_words or "").split(",") if w.strip())
            request = PromptToPromptRequest(base, str(target or ""), float(cross), float(self_fraction), reweight,
                                            bool(blend), blend_words=words, inverted=inverted,
                                            blend_mask=str(blend_mask or "auto"),
                                            mask_grow=None if mask_grow in (None, "auto") else int(mask_grow))
        except USER_ERRORS as e:
            yield gr.skip(), gr.skip(), status_html(user_message(e), "error")
            return
        controller = self.controller_for(session, use_edited)

        def work(token, emit):
            return controller.prompt_to_prompt(request, cancel=token,
                                               on_progress=lambda step, total: emit((step, total)))

        seen = {"total": 1}

        def on_events(batch):
            seen["total"] = batch[-1][1]
            return gr.skip(), progress_html(*batch[-1]), gr.skip()

        t0 = time.perf_counter()
        out = yield from streamed(session, work, "studio-p2p", "prompt-to-prompt", on_events)
        if out is None:
            return
        total = seen["total"]
        gallery = [(out.source, "source"), (out.edited, "edited")]
        if out.blend_mask is not None:
            gallery.append((mask_picture(out.blend_mask, out.source.size), "local-blend mask (noise contrast)"))
            share = float(out.blend_mask.mean())
            widened = (f", widened by {out.mask_grow} latent pixel{'s' if out.mask_grow > 1 else ''}"
                       if out.mask_grow else "")
            blend_note = f"; local blend inside the noise-contrast mask ({share:.0%} of the image{widened})"
        else:
            blend_note = f"; local blend on {', '.join(out.blend_words[1]) or '-'}" if blend else ""
        yield (gallery, progress_html(total, total, f"{time.perf_counter() - t0:.1f} s"),
               status_html(f"prompt-to-prompt done (seed {out.request.seed}){blend_note}", "ok"))

    @staticmethod
    def mask_grow_field(blend_mask):
        """The widening applies to the noise-contrast mask only: greyed out with the attention mask."""
        return gr.update(interactive=blend_mask != "attention")

    def stop(self, session: EditingSession):
        return stop_run(session)

    # ---- concept edits (a model copy owned by the session)

    def concept_presets(self) -> dict[str, ConceptEditSpec]:
        _, presets = self.controller.concept_presets()
        return {p.name: p.spec for p in presets}

    def concept_preset(self, name):
        """Fill the form from a shipped edit: (method, edits, preserve, lambda, preserve weight)."""
        spec = self.concept_presets().get(name)
        if spec is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (spec.method, ", ".join(f"{a} -> {b}".rstrip() for a, b in spec.edits), ", ".join(spec.preserve),
                spec.lam, spec.preserve_weight)

    def concept_apply(self, session: EditingSession, method, edits, preserve, lam, preserve_weight):
        """Compute the edit and make it this session's model copy; the status line."""
        try:
            templates, _ = self.controller.concept_presets()
            spec = ConceptEditSpec(method=str(method), edits=parse_edits(str(edits or "")),
                                   preserve=parse_concepts(str(preserve or "")),
                                   strength=None if lam in (None, "") else float(lam), templates=templates,
                                   preserve_weight=float(preserve_weight))
            session.edited = self.controller.edit_concepts(spec)
        except USER_ERRORS as e:
            return status_html(user_message(e), "error")
        return self._concept_status(session, "applied")

    def concept_revert(self, session: EditingSession):
        if session.edited is None:
            return status_html("no concept edit is active; the original model is in use", "info")
        session.edited = None
        return status_html("reverted: this session uses the original model again", "ok")

    def concept_save(self, session: EditingSession):
        """(file to download, status)."""
        if session.edited is None:
            return None, status_html("apply or load a concept edit first", "error")
        folder = Path(tempfile.mkdtemp(prefix="studio-concept-"))
        name = "concept-edit-" + session.edited.delta.digest + ".safetensors"
        try:
            path = self.controller.save_concept_edit(session.edited, folder / name)
        except (OSError, *USER_ERRORS) as e:
            return None, status_html(f"could not save the edit: {user_message(e)}", "error")
        return str(path), self._concept_status(session, f"saved as {name}")

    def concept_load(self, session: EditingSession, file):
        if file is None:
            return status_html("choose a concept-edit file (.safetensors) to load", "error")
        path = getattr(file, "name", file)
        try:
            session.edited = self.controller.load_concept_edit(path)
        except USER_ERRORS as e:
            return status_html(user_message(e), "error")
        return self._concept_status(session, "loaded")

    def concept_compare(self, session: EditingSession, prompt, negative, seed, steps, cfg, sampler):
        """(before/after gallery, status): the prompt on the original model and on the session's copy."""
        if session is None or session.edited is None:
            return gr.skip(), status_html("apply or load a concept edit first", "error")
        try:
            limits = FormLimits.for_model(self.controller.model, self.defaults)
            base = limits.fixed_seed_request(self.defaults, why="before and after share the noise", seed=seed,
                                             steps=steps, cfg=cfg, prompt=prompt, negative_prompt=negative)
            base = replace(base, sampler=limits.check("sampler", sampler))
            out = self.controller.compare_concept_edit(session.edited, base)
        except USER_ERRORS as e:
            return gr.skip(), status_html(user_message(e), "error")
        return [(out.original, "original model"), (out.edited, "edited model")], \
            status_html(f"rendered before/after (seed {out.request.seed}, {out.timings['total']:.1f} s)", "ok")

    @staticmethod
    def _concept_status(session: EditingSession, what: str) -> str:
        e = session.edited
        return status_html(f"{what}: {METHOD_NAMES[e.delta.spec.method]}: {e.describe()} ({e.seconds:.2f} s); "
                           f"this session's model is now {e.model.weights_hash} (only you see it)", "ok")


def build_editing_tab(handlers: EditingHandlers, state: gr.State) -> None:
    d = handlers.defaults
    tinyworld = handlers.tinyworld
    with gr.Row():
        with gr.Column(scale=5):
            mode = gr.Radio(list(MODES), value="inpaint", label="Mode", elem_id="edit_mode")
            with gr.Row():
                source = gr.Image(label="Input image", type="pil", sources=["upload", "clipboard"], height=220,
                                  elem_id="edit_source")
                if tinyworld:
                    with gr.Column():
                        scene_seed = gr.Number(value=1, precision=0, label="Scene seed", elem_id="edit_scene_seed")
                        scene = gr.Button("Draw a Tiny World scene", elem_id="edit_scene")
            editor = gr.ImageEditor(label="Mask: paint over what to repaint (inpaint)", type="numpy",
                                    image_mode="RGBA", sources=(), transforms=(), layers=False, height=300,
                                    brush=gr.Brush(colors=["#e53935"], default_size=32, color_mode="fixed"),
                                    elem_id="edit_mask")
            prompt = gr.Textbox(value="a large blue square on a black background" if tinyworld else "",
                                label="Prompt (what to paint)", elem_id="edit_prompt")
            negative = gr.Textbox(value=d.negative_prompt, label="Negative prompt", elem_id="edit_negative")
            with gr.Row():
                seed = gr.Number(value=1, precision=0, label="Seed", elem_id="edit_seed")
                steps = gr.Slider(1, 150, value=d.steps, step=1, label="Steps", elem_id="edit_steps")
                cfg = gr.Slider(0, 30, value=d.cfg, step=0.5, label="CFG scale", elem_id="edit_cfg")
                sampler = gr.Dropdown(list(SAMPLERS), value=d.sampler, label="Sampler", elem_id="edit_sampler")
            with gr.Row():
                strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength (fraction of steps run)",
                                     elem_id="edit_strength")
                feather = gr.Slider(0, 16, value=4, step=1, label="Mask feather (px)", elem_id="edit_feather")
            with gr.Row():
                side = gr.Dropdown(list(SIDES), value="right", label="Outpaint side", elem_id="edit_side")
                pixels = gr.Slider(8, 128, value=16, step=8, label="Outpaint by (px)", elem_id="edit_pixels")
            run, stop, progress, status = run_controls(
                "edit", "Edit", "Load an image, paint a mask, describe what to paint, Edit.")
        with gr.Column(scale=5):
            result = gr.Image(label="Result (live preview while it runs)", type="pil", format="png",
                              interactive=False, height=300, elem_id="edit_result")
            with gr.Accordion("Invert a real image (reconstruct it, then edit it with prompt-to-prompt)", open=False):
                gr.Markdown("DDIM inversion of the **Input image** under the **Prompt** (describe the image), with "
                            "the Steps above. Null-text optimisation makes the reconstruction hold at the CFG scale "
                            "above, so edits keep full guidance (slower: a few Adam steps per sampling step).")
                with gr.Row():
                    null_text = gr.Checkbox(value=False, label="Null-text optimisation", elem_id="edit_inv_null")
                    inner_steps = gr.Slider(1, 30, value=10, step=1, label="Inner steps (null-text)",
                                            elem_id="edit_inv_inner")
                invert_run = gr.Button("Invert", elem_id="edit_inv_run")
                invert_image = gr.Image(label="Reconstruction", type="pil", format="png", interactive=False,
                                        height=200, elem_id="edit_inv_image")
                invert_progress = gr.HTML(progress_html(0, 1, "idle"), elem_id="edit_inv_progress")
                invert_status = gr.HTML(elem_id="edit_inv_status")
            with gr.Accordion("Prompt-to-prompt: edit a generated image by editing its prompt", open=False):
                p2p_target = gr.Textbox(value="a large red square on a black background" if tinyworld else "",
                                        label="Edited prompt (the Prompt above is the source)",
                                        elem_id="edit_p2p_target")
                with gr.Row():
                    cross = gr.Slider(0, 1, value=0.8, step=0.05, label="Cross-attention injected (fraction of steps)",
                                      elem_id="edit_p2p_cross")
                    self_fraction = gr.Slider(0, 1, value=0.4, step=0.05, label="Self-attention injected",
                                              elem_id="edit_p2p_self")
                with gr.Row():
                    reweight_word = gr.Textbox(label="Reweight word (of the edited prompt)",
                                               elem_id="edit_p2p_word")
                    reweight_factor = gr.Slider(-5, 10, value=1.0, step=0.5, label="factor",
                                                elem_id="edit_p2p_factor")
                    blend = gr.Checkbox(value=True, label="Local blend (keep the rest)", elem_id="edit_p2p_blend")
                    blend_words = gr.Textbox(label="Local-blend words (optional, comma-separated; default: the "
                                             "changed words)", placeholder="e.g. circle", elem_id="edit_p2p_blend_words")
                blend_mask = gr.Radio([("auto (noise contrast when the prompts differ, else attention)", "auto"),
                                       ("cross-attention of the blend words (prompt-to-prompt)", "attention"),
                                       ("noise contrast of the two prompts (DiffEdit; half-renders the source)",
                                        "contrast")], value="auto", label="Local-blend mask",
                                      elem_id="edit_p2p_blend_mask")
                mask_grow = gr.Dropdown([("auto (1 for an inverted image, else 0)", "auto"), ("0", "0"), ("1", "1"),
                                         ("2", "2"), ("3", "3"), ("4", "4")], value="auto",
                                        label="Widen the noise-contrast mask (latent pixels)",
                                        elem_id="edit_p2p_mask_grow")
                on_inverted = gr.Checkbox(value=False, label="Edit the inverted input image (invert it first)",
                                          elem_id="edit_p2p_inverted")
                p2p_run = gr.Button("Render source and edit", elem_id="edit_p2p_run")
                p2p_gallery = gr.Gallery(label="before · after (same noise)", columns=2, height=220,
                                         elem_id="edit_p2p_gallery")
                p2p_progress = gr.HTML(progress_html(0, 1, "idle"), elem_id="edit_p2p_progress")
                p2p_status = gr.HTML(elem_id="edit_p2p_status")
            with gr.Accordion("Concept edits of the model (this browser session only)", open=False):
                presets = handlers.concept_presets()
                with gr.Row():
                    concept_preset = gr.Dropdown(list(presets), value=None, label="Suggested edit",
                                                 elem_id="edit_concept_preset")
                    concept_method = gr.Radio([(v, k) for k, v in METHOD_NAMES.items()], value="uce",
                                              label="Method", elem_id="edit_concept_method")
                concept_edits = gr.Textbox(value="circle -> square" if tinyworld else "",
                                           label="Edits: old -> new (comma-separated; 'old ->' erases)",
                                           elem_id="edit_concept_edits")
                concept_preserve = gr.Textbox(value="triangle, square, ring, star" if tinyworld else "",
                                              label="Preserve (concepts that must not change)",
                                              elem_id="edit_concept_preserve")
                with gr.Row():
                    concept_lambda = gr.Number(value=DEFAULT_STRENGTH["uce"],
                                               label="lambda (regulariser: larger keeps the model closer)",
                                               elem_id="edit_concept_lambda")
                    concept_pweight = gr.Slider(0, 2, value=0.3 if tinyworld else 1.0, step=0.05,
                                                label="Preserve weight", elem_id="edit_concept_pweight")
                with gr.Row():
                    concept_apply = gr.Button("Apply to my session's model", variant="primary",
                                              elem_id="edit_concept_apply")
                    concept_revert = gr.Button("Revert", elem_id="edit_concept_revert")
                    concept_save = gr.Button("Save edit", elem_id="edit_concept_save")
                with gr.Row():
                    concept_file = gr.File(label="Saved edit (download)", interactive=False,
                                           elem_id="edit_concept_file")
                    concept_upload = gr.File(label="Load an edit (.safetensors)", file_types=[".safetensors"],
                                             elem_id="edit_concept_upload")
                use_edited = gr.Checkbox(value=True, label="Run the edits above on the concept-edited model "
                                         "(when one is active)", elem_id="edit_concept_use")
                concept_compare = gr.Button("Render the Prompt before / after the edit",
                                            elem_id="edit_concept_compare")
                concept_gallery = gr.Gallery(label="original · edited model (same seed)", columns=2, height=220,
                                             elem_id="edit_concept_gallery")
                concept_status = gr.HTML(status_html("no concept edit: the original model is in use"),
                                         elem_id="edit_concept_status")

    gpu = dict(concurrency_limit=1, concurrency_id="gpu", show_progress="hidden")
    light = dict(concurrency_limit=None, concurrency_id="light", show_progress="hidden")
    source.upload(handlers.to_editor, inputs=[source], outputs=[editor], **light)
    if tinyworld:
        scene.click(handlers.scene, inputs=[scene_seed], outputs=[source, editor], **light)
    form = [mode, source, editor, prompt, negative, seed, steps, cfg, sampler, strength, feather, side, pixels]
    run.click(handlers.run, inputs=[state, use_edited, *form], outputs=[result, progress, status], **gpu)
    stop.click(handlers.stop, inputs=[state], outputs=[status], **light)
    blend_mask.change(handlers.mask_grow_field, inputs=[blend_mask], outputs=[mask_grow], **light)
    p2p_run.click(handlers.prompt_to_prompt, inputs=[state, use_edited, prompt, p2p_target, negative, seed, steps,
                                                     cfg, sampler, cross, self_fraction, reweight_word,
                                                     reweight_factor, blend, on_inverted, blend_words,
                                                     blend_mask, mask_grow],
                  outputs=[p2p_gallery, p2p_progress, p2p_status], **gpu)
    invert_run.click(handlers.invert, inputs=[state, use_edited, source, prompt, negative, seed, steps, cfg,
                                              null_text, inner_steps],
                     outputs=[invert_image, invert_progress, invert_status], **gpu)
    concept_fields = [concept_method, concept_edits, concept_preserve, concept_lambda, concept_pweight]
    concept_preset.change(handlers.concept_preset, inputs=[concept_preset], outputs=concept_fields, **light)
    concept_method.input(lambda method: DEFAULT_STRENGTH.get(method, gr.skip()), inputs=[concept_method],
                         outputs=[concept_lambda], **light)
    concept_apply.click(handlers.concept_apply, inputs=[state, *concept_fields], outputs=[concept_status], **gpu)
    concept_revert.click(handlers.concept_revert, inputs=[state], outputs=[concept_status], **light)
    concept_save.click(handlers.concept_save, inputs=[state], outputs=[concept_file, concept_status], **light)
    concept_upload.upload(handlers.concept_load, inputs=[state, concept_upload], outputs=[concept_status], **gpu)
    concept_compare.click(handlers.concept_compare, inputs=[state, prompt, negative, seed, steps, cfg, sampler],
                          outputs=[concept_gallery, concept_status], **gpu)
