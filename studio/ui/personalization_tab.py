"""The Personalization tab: teach the model a concept from a few images (textual inversion, per-stage inversion,
LoRA), watch it learn, use it, keep it in the concept library. Widgets only; the work is
:class:`~studio.controllers.personalize.PersonalizationController`'s.

What a session learns belongs to it (:class:`PersonalizationSession`, in ``gr.State``) until it is saved to the
library; another browser session never sees it. Generation runs on a private copy of the model that knows the
session's tokens; the shared model never learns one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from studio.attributes.definitions import model_kind
from studio.composition.stages import NUM_STAGES
from studio.controllers.personalize import (
    ConceptUse, PersonalizationController, PersonalizedRequest, TrainConceptRequest, TrainLoraRequest,
)
from studio.personalization.formats import save_concept
from studio.personalization.library import ConceptLibrary, check_name
from studio.personalization.lora import LoraSpec, LoraWeights, save_lora
from studio.personalization.training import AUGMENTS, TrainingSpec

from .errors import USER_ERRORS, status_html, user_message
from .generate_tab import FormLimits, progress_html
from .streaming import RunSession, run_controls, stop_run, stream_outputs

METHODS = ("textual-inversion", "prospect", "lora")
LORA_SLOTS = 3
NONE = "(none)"


@dataclass
class PersonalizationSession(RunSession):
    """What one browser session has learned or loaded: name -> concept (LearnedConcept) or LoRA (LoraWeights)."""

    learned: dict = field(default_factory=dict)
    previews: dict = field(default_factory=dict)


class PersonalizationHandlers:
    """Event handlers (plain functions of form values, testable without a browser)."""

    def __init__(self, controller: PersonalizationController, library: ConceptLibrary):
        self.controller = controller
        self.library = library
        self.defaults = controller.defaults()
        self.tinyworld = model_kind(controller.model) == "tinyworld"

    # ---- training images

    def examples(self, shape, seed):
        """Eight drawn Tiny World scenes of a held-out shape, in two colours (the benchmark's setting)."""
        import random

        from studio.tinyworld.scenes import SceneObject, scene_from_objects
        from studio.tinyworld.vocab import SIZES

        rng = random.Random(int(seed or 0))
        images = []
        for i in range(8):
            size = rng.choice(["medium", "large", "huge"])
            r = SIZES[size]
            obj = SceneObject(str(shape), ("red", "blue")[i % 2], size, r, rng.uniform(r + 2, 62 - r),
                              rng.uniform(r + 2, 62 - r))
            images.append(scene_from_objects(rng.choice(["black", "white", "gray"]), [obj]).image)
        return [(im, f"{shape} {i + 1}") for i, im in enumerate(images)]

    @staticmethod
    def images_of(gallery) -> list[Image.Image]:
        out = []
        for item in gallery or []:
            image = item[0] if isinstance(item, (list, tuple)) else item
            if isinstance(image, (str, Path)):
                image = Image.open(image)
            if isinstance(image, Image.Image):
                out.append(image.convert("RGB"))
        return out

    # ---- training

    def train(self, session: PersonalizationSession, gallery, method, token, init_word, steps, lr, rank,
              preview_every, start_over, lora_resnets=False, augment="none", vectors=1):
        """Generator: yields (progress, preview image, status, concept choices, *LoRA slot choices)."""
        session = session if session is not None else PersonalizationSession()
        try:
            images = self.images_of(gallery)
            token = str(token or "").strip()
            if method not in METHODS:
                raise ValueError(f"method must be one of {', '.join(METHODS)}")
            if method == "lora":
                spec = LoraSpec(token, str(init_word or ""), int(rank), int(steps), float(lr),
                                resnets=bool(lora_resnets), augment=str(augment))
                spec.check()
                request = TrainLoraRequest(tuple(images), spec)
            else:
                spec = TrainingSpec(token, str(init_word or ""), method, int(steps), float(lr),
                                    preview_every=int(preview_every),
                                    checkpoint_every=max(1, min(50, int(steps) // 10)), augment=str(augment),
                                    vectors=int(vectors) if method == "textual-inversion" else 1)
                spec.check()
                request = TrainConceptRequest(tuple(images), spec)
        except USER_ERRORS as e:
            yield gr.skip(), gr.skip(), status_html(user_message(e), "error"), *self._skips()
            return

        def work(cancel, emit):
            progress = lambda step, total, loss: emit(("step", step, total, loss))  # noqa: E731
            if method == "lora":
                return self.controller.train_lora(request, cancel=cancel, on_progress=progress)
            return self.controller.train(request, cancel=cancel, on_progress=progress,
                                         on_preview=lambda image, step: emit(("preview", image, step, None)),
                                         resume=not start_over)

        def on_events(batch):
            steps_seen = [e for e in batch if e[0] == "step"]
            previews = [e for e in batch if e[0] == "preview"]
            bar = gr.skip()
            if steps_seen:
                _, step, total, loss = steps_seen[-1]
                bar = progress_html(step, total, f"loss {loss:.4f}")
            return bar, previews[-1][1] if previews else gr.skip(), gr.skip(), *self._skips()

        t0 = time.perf_counter()
        stopped = ("stopped" if method == "lora" else
                   "stopped; Train again with the same settings to resume from the last checkpoint")
        result = yield from stream_outputs(session, work, "studio-personalize", "training", on_events,
                                           lambda progress, status: (progress, gr.skip(), status, *self._skips()),
                                           stopped=stopped)
        if result is None:
            return
        learned = getattr(result, "lora", None) or result.concept
        name = token.strip("<>") + ("-lora" if method == "lora" else "" if method == "textual-inversion"
                                    else "-stages")
        session.learned[name] = learned
        preview = result.previews[-1][1] if getattr(result, "previews", None) else None
        if preview is None:
            preview = self._preview(learned)
        session.previews[name] = preview
        resumed = f", resumed from step {result.resumed_from}" if getattr(result, "resumed_from", 0) else ""
        yield (progress_html(1, 1, f"{time.perf_counter() - t0:.0f} s"), preview,
               status_html(f"learned {token} as '{name}' ({method}, {len(result.losses)} steps{resumed}); use it "
                           "below, save it to the library to keep it", "ok"),
               *self.choice_updates(session))

    @staticmethod
    def _skips() -> list:
        return [gr.skip() for _ in range(1 + LORA_SLOTS)]

    def _preview(self, learned) -> Image.Image:
        from studio.engine import GenerationRequest

        concept = learned.concept if isinstance(learned, LoraWeights) else learned
        loras = ((learned, 1.0),) if isinstance(learned, LoraWeights) else ()
        uses = () if isinstance(learned, LoraWeights) else (ConceptUse(concept),)
        request = GenerationRequest(prompt=f"a {concept.token}", steps=12, seed=0, cfg=self.defaults.cfg,
                                    sampler=self.defaults.sampler)
        return self.controller.generate(PersonalizedRequest(request, uses, loras), save=False).images[0]

    def stop(self, session):
        return stop_run(session)

    # ---- using concepts

    def choice_updates(self, session) -> list:
        """Updates for the concept checkboxes and every LoRA slot (after the list of concepts changed)."""
        names = self.choices(session)
        return [gr.update(choices=names)] + [gr.update(choices=[NONE] + names) for _ in range(LORA_SLOTS)]

    def choices(self, session: PersonalizationSession | None) -> list[str]:
        own = list((session.learned if session is not None else {}).keys())
        saved = [f"library: {e.name}" for e in self.library.entries()]
        return own + saved

    def _resolve(self, session, name: str):
        if name.startswith("library: "):
            entry = self.library.path(name.removeprefix("library: "))
            if not entry.is_file():
                raise ValueError(f"{name} is no longer in the library")
            try:
                return self.controller.load_lora(entry)
            except ValueError:
                return self.controller.load(entry)
        if session is None or name not in session.learned:
            raise ValueError(f"{name} is not one of this session's concepts")
        return session.learned[name]

    def render(self, session, prompt, seed, steps, cfg, chosen, stages, replacement, *slots):
        """(image, status): the prompt with the chosen concepts (all LoRAs among them at scale 1 unless a LoRA
        slot sets another scale)."""
        try:
            limits = FormLimits.for_model(self.controller.model, self.defaults)
            base = limits.fixed_seed_request(self.defaults, why="the concept can be compared", seed=seed,
                                             steps=steps, cfg=cfg, prompt=prompt)
            uses, loras = [], {}
            for name in chosen or []:
                item = self._resolve(session, name)
                if isinstance(item, LoraWeights):
                    loras[name] = (item, 1.0)
                else:
                    uses.append(ConceptUse(item, tuple(int(k) for k in (stages or [])) or tuple(range(1, 11)),
                                           str(replacement or "")))
            for i in range(0, len(slots), 2):
                name, scale = slots[i], slots[i + 1]
                if name and name != NONE:
                    loras[name] = (self._resolve(session, name), float(scale))
            out = self.controller.generate(PersonalizedRequest(base, tuple(uses), tuple(loras.values())))
        except USER_ERRORS as e:
            return gr.skip(), status_html(user_message(e), "error")
        saved = f"; saved {getattr(out.saved[0], 'relative_path', out.saved[0])}" if out.saved else ""
        used = ", ".join([u.concept.token for u in uses] + [f"{n}×{s:g}" for n, (_, s) in loras.items()])
        return out.images[0], status_html(f"rendered with {used or 'no concept'} (seed {out.request.seed}){saved}",
                                          "ok")

    # ---- library

    def save(self, session, name, new_name):
        """(status, choices update, library table)."""
        try:
            item = self._resolve(session, str(name or ""))
            target = check_name(str(new_name or "") or str(name).removeprefix("library: "))
            if isinstance(item, LoraWeights):
                writer = lambda path: save_lora(item, path)  # noqa: E731
            else:
                writer = lambda path: save_concept(item, path)  # noqa: E731
            self.library.save(target, writer, session.previews.get(name) if session else None)
        except USER_ERRORS as e:
            return status_html(user_message(e), "error"), gr.skip(), *self._skips()
        return (status_html(f"saved '{target}' to the library", "ok"), self.table(), *self.choice_updates(session))

    def table(self):
        return [[e.name, e.kind, str(e.path.name)] for e in self.library.entries()]

    def gallery(self):
        return [(str(e.preview), e.name) for e in self.library.entries() if e.preview is not None]

    def rename(self, session, old, new):
        try:
            self.library.rename(str(old or ""), str(new or ""))
        except USER_ERRORS as e:
            return status_html(user_message(e), "error"), gr.skip(), *self._skips()
        return status_html(f"renamed '{old}' to '{new}'", "ok"), self.table(), *self.choice_updates(session)

    def delete(self, session, name):
        try:
            self.library.delete(str(name or ""))
        except USER_ERRORS as e:
            return status_html(user_message(e), "error"), gr.skip(), *self._skips()
        return status_html(f"deleted '{name}'", "ok"), self.table(), *self.choice_updates(session)

    def load_file(self, session, file):
        """Upload an embedding or a LoRA into this session."""
        if file is None:
            return status_html("choose an embedding or LoRA file (.safetensors)", "error"), *self._skips()
        path = Path(getattr(file, "name", file))
        try:
            try:
                item = self.controller.load_lora(path)
                name = item.name + "-lora"
            except ValueError:
                item = self.controller.load(path)
                name = item.token.strip("<>")
            session.learned[name] = item
        except USER_ERRORS as e:
            return status_html(user_message(e), "error"), *self._skips()
        return status_html(f"loaded '{name}' into this session", "ok"), *self.choice_updates(session)


def build_personalization_tab(handlers: PersonalizationHandlers, state: gr.State) -> None:
    d = handlers.defaults
    tinyworld = handlers.tinyworld
    choices = handlers.choices(None)
    with gr.Row():
        with gr.Column(scale=5):
            images = gr.Gallery(label="Images of the concept (3 to 20): drop them here", type="pil",
                                interactive=True, columns=4, height=220, elem_id="pers_images")
            if tinyworld:
                with gr.Row():
                    shape = gr.Dropdown(["ring", "star"], value="ring", label="Held-out shape",
                                        elem_id="pers_shape")
                    scene_seed = gr.Number(value=0, precision=0, label="Scene seed", elem_id="pers_scene_seed")
                    draw = gr.Button("Draw 8 Tiny World examples", elem_id="pers_draw")
            with gr.Row():
                method = gr.Radio(list(METHODS), value="textual-inversion", label="Method", elem_id="pers_method")
                token = gr.Textbox(value="<ring>" if tinyworld else "<my-thing>", label="Placeholder token",
                                   elem_id="pers_token")
                init_word = gr.Textbox(value="circle" if tinyworld else "object", label="Initializer word",
                                       elem_id="pers_init")
            with gr.Row():
                steps = gr.Slider(1, 3000, value=300, step=1, label="Training steps", elem_id="pers_steps")
                lr = gr.Number(value=1e-3, label="Learning rate", elem_id="pers_lr")
                rank = gr.Slider(1, 64, value=8, step=1, label="LoRA rank", elem_id="pers_rank")
                vectors = gr.Slider(1, 16, value=1, step=1, label="Vectors per token (textual inversion; each starts at the next word of the initializer text)",
                                    elem_id="pers_vectors")
                preview_every = gr.Slider(0, 500, value=100, step=10, label="Preview every N steps",
                                          elem_id="pers_preview_every")
            with gr.Row():
                start_over = gr.Checkbox(value=False, label="Start over (ignore the checkpoint of an earlier run)",
                                         elem_id="pers_start_over")
                lora_resnets = gr.Checkbox(value=False, label="LoRA also on the ResNet convolutions (new shapes)",
                                           elem_id="pers_lora_resnets")
                augment = gr.Dropdown(list(AUGMENTS), value="none", label="Also train on mirrored copies",
                                      info="mirror: left-right; mirror+flip: also upside down (subjects that look "
                                           "right any way up)", elem_id="pers_augment")
            train, stop, progress, status = run_controls(
                "pers", "Train", "Add 3 to 20 images, name a token, Train. Stop keeps a checkpoint; Train resumes.")
            preview = gr.Image(label="Preview while it learns", type="pil", interactive=False, height=200,
                               elem_id="pers_preview")
        with gr.Column(scale=5):
            prompt = gr.Textbox(value="a green <ring> at the top left" if tinyworld else "a photo of <my-thing>",
                                label="Prompt (write the token where the concept goes)", elem_id="pers_prompt")
            with gr.Row():
                seed = gr.Number(value=1, precision=0, label="Seed", elem_id="pers_seed")
                gen_steps = gr.Slider(1, 150, value=d.steps, step=1, label="Steps", elem_id="pers_gen_steps")
                cfg = gr.Slider(0, 30, value=d.cfg, step=0.5, label="CFG scale", elem_id="pers_cfg")
            chosen = gr.CheckboxGroup(choices, label="Concepts to use (this session's and the library's)",
                                      elem_id="pers_use")
            stages = gr.CheckboxGroup([str(k) for k in range(1, NUM_STAGES + 1)],
                                      value=[str(k) for k in range(1, NUM_STAGES + 1)],
                                      label="Per-stage concepts: stages that take the concept (1 = first, noisiest "
                                            "steps: layout and shape; 10 = detail)", elem_id="pers_stages")
            replacement = gr.Textbox(label="...the word in the other stages (default: its initializer word)",
                                     elem_id="pers_replacement")
            slots = []
            for i in range(LORA_SLOTS):
                with gr.Row():
                    slots.append(gr.Dropdown([NONE] + choices, value=NONE, label=f"LoRA {i + 1}",
                                             elem_id=f"pers_lora_{i}"))
                    slots.append(gr.Slider(-2, 2, value=1.0, step=0.05, label="scale", elem_id=f"pers_lora_{i}_scale"))
            render = gr.Button("Render", variant="primary", elem_id="pers_render")
            result = gr.Image(label="Result", type="pil", format="png", interactive=False, height=240,
                              elem_id="pers_result")
            render_status = gr.HTML(elem_id="pers_render_status")
            with gr.Accordion("Concept library", open=False):
                with gr.Row():
                    save_name = gr.Textbox(label="Save the concept ticked first above as", elem_id="pers_save_name")
                    save = gr.Button("Save to library", elem_id="pers_save")
                library = gr.Dataframe(handlers.table(), headers=["name", "kind", "file"], interactive=False,
                                       elem_id="pers_library")
                with gr.Row():
                    old = gr.Textbox(label="Saved name", elem_id="pers_old")
                    new = gr.Textbox(label="New name", elem_id="pers_new")
                    rename = gr.Button("Rename", elem_id="pers_rename")
                    delete = gr.Button("Delete", variant="stop", elem_id="pers_delete")
                upload = gr.File(label="Load an embedding or LoRA (.safetensors) into this session",
                                 file_types=[".safetensors"], elem_id="pers_upload")
                library_status = gr.HTML(elem_id="pers_library_status")

    gpu = dict(concurrency_limit=1, concurrency_id="gpu", show_progress="hidden")
    light = dict(concurrency_limit=None, concurrency_id="light", show_progress="hidden")
    if tinyworld:
        draw.click(handlers.examples, inputs=[shape, scene_seed], outputs=[images], **light)
    train.click(handlers.train, inputs=[state, images, method, token, init_word, steps, lr, rank, preview_every,
                                        start_over, lora_resnets, augment, vectors],
                outputs=[progress, preview, status, chosen, *slots[0::2]],
                concurrency_limit=1, concurrency_id="train", show_progress="hidden")
    stop.click(handlers.stop, inputs=[state], outputs=[status], **light)
    render.click(handlers.render, inputs=[state, prompt, seed, gen_steps, cfg, chosen, stages, replacement, *slots],
                 outputs=[result, render_status], **gpu)
    save.click(lambda s, c, n: handlers.save(s, (c or [""])[0], n), inputs=[state, chosen, save_name],
               outputs=[library_status, library, chosen, *slots[0::2]], **light)
    rename.click(handlers.rename, inputs=[state, old, new], outputs=[library_status, library, chosen, *slots[0::2]],
                 **light)
    delete.click(handlers.delete, inputs=[state, old], outputs=[library_status, library, chosen, *slots[0::2]],
                 **light)
    upload.upload(handlers.load_file, inputs=[state, upload], outputs=[library_status, chosen, *slots[0::2]],
                  **light)
