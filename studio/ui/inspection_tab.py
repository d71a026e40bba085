"""The Inspection tab: a run recorded step by step (filmstrip with a scrubber, guidance decomposition, streamed
cross-attention maps per word), branching from a step, the diffusion classifier, token information maps and
exports. Widgets only; the work is :class:`~studio.controllers.inspect.InspectionController`'s. Per-user state lives
in :class:`InspectionSession`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from html import escape
from pathlib import Path

import gradio as gr

from studio.attributes.definitions import model_kind
from studio.controllers.inspect import (
    BranchRequest, ClassifyRequest, InformationRequest, InspectionController, InspectionRun, InspectRequest,
)
from studio.engine import SAMPLERS
from studio.inspection.classifier import parse_stages
from studio.inspection.figures import map_figure

from .errors import USER_ERRORS, status_html, unexpected_message, user_message
from .generate_tab import FormLimits, progress_html
from .streaming import RunSession, run_controls, stop_run, stream_outputs

ALL = "all"
EXPORT_PANELS = ("trajectory", "guidance", "attention", "classifier", "information")


@dataclass
class InspectionSession(RunSession):
    """One browser session's inspection state (never shared between sessions)."""

    run: InspectionRun | None = None
    classification: object | None = None
    information: object | None = None
    information_image: object | None = None


class InspectionHandlers:
    """Event handlers (plain functions of form values, testable without a browser)."""

    def __init__(self, controller: InspectionController, outputs_dir: Path | str, attributes=None):
        self.controller = controller
        self.attributes = attributes  # an AttributesController: sliders in branches (optional)
        self.defaults = controller.defaults()
        self.outputs = Path(outputs_dir) / "inspection"

    # ------------------------------------------------------------------ run

    def words(self, prompt, steps):
        try:
            words = list(self.controller.prompt_words(str(prompt or ""), int(steps)))
        except USER_ERRORS:
            return gr.update()
        return gr.update(choices=words, value=_pick_word(words))

    def run(self, session: InspectionSession, prompt, negative, seed, steps, cfg, sampler, attention, word, opacity):
        """Generator: yields (image, attention overlay, progress, status)."""
        session = session if session is not None else InspectionSession()
        try:
            limits = FormLimits.for_model(self.controller.model, self.defaults)
            base = limits.fixed_seed_request(self.defaults, why="a branch can re-run the same noise", seed=seed,
                                             steps=steps, cfg=cfg, prompt=prompt, negative_prompt=negative)
            base = replace(base, sampler=limits.check("sampler", sampler))
            words = self.controller.prompt_words(base.prompt, base.steps)
            stream = str(word).lower() if attention and word and str(word).lower() in words else None
            request = InspectRequest(base, attention=bool(attention), stream_word=stream)
        except USER_ERRORS as e:
            yield gr.skip(), gr.skip(), gr.skip(), status_html(user_message(e), "error")
            return

        def on_events(batch):  # the newest step only
            last = batch[-1]
            return (last.x0_image, last.attention_image if last.attention_image is not None else gr.skip(),
                    progress_html(last.step + 1, last.num_steps), gr.skip())

        t0 = time.perf_counter()
        run = yield from stream_outputs(session, lambda token, emit: self.controller.run(
            request, cancel=token, on_step=emit), "studio-inspect", "inspect", on_events,
            lambda progress, status: (gr.skip(), gr.skip(), progress, status))
        if run is None:
            return
        session.run = run
        overlay = self.controller.word_overlay(run, stream, float(opacity)) if stream else None
        took = time.perf_counter() - t0
        yield (run.image, overlay, progress_html(1, 1, f"{took:.1f} s"),
               status_html(f"recorded {run.num_steps} steps (seed {run.request.seed}); scrub the filmstrip, pick "
                           "words, branch or export", "ok"))

    def stop(self, session: InspectionSession):
        return stop_run(session)

    # ------------------------------------------------------------------ views of the run

    def after_run(self, session: InspectionSession, word):
        """Scrubber range, word list and breakdown choices for the new run."""
        run = session.run if session else None
        if run is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        words = list(run.words)
        groups = run.attention.resolutions() if run.attention is not None else {}
        layers = run.attention.layers if run.attention is not None else []
        keep = str(word).lower() if word and str(word).lower() in words else _pick_word(words)
        return (gr.update(maximum=run.num_steps - 1, value=run.num_steps - 1),
                gr.update(choices=words, value=keep),
                gr.update(choices=[ALL, *groups], value=ALL), gr.update(choices=[ALL, *layers], value=ALL))

    def show_step(self, session: InspectionSession, step):
        """(x_t, x0, decomposition gallery, step caption) at the scrubber's step."""
        run = session.run if session else None
        if run is None:
            return None, None, [], "run an inspection first"
        try:
            k = min(max(int(step), 0), run.num_steps - 1)
            panels = [(self.controller.frame(run, k, role), self.controller.role_label(run, role))
                      for role in run.trajectory.roles]
            panels.append((self.controller.frame(run, k, "guided"), "guided (CFG)"))
            if "uncond" in run.trajectory.roles:
                for role in run.trajectory.roles[1:]:
                    panels.append((self.controller.difference(run, k, role), f"|eps_c - eps_u| {role}"))
            rec = run.trajectory.records[k]
            caption = f"step {k + 1} / {run.num_steps} · timestep {rec.timestep} · alpha_bar {rec.alpha_bar:.4f}"
            return self.controller.frame(run, k, "x_t"), self.controller.frame(run, k, "x0"), panels, caption
        except USER_ERRORS as e:
            return gr.skip(), gr.skip(), gr.skip(), user_message(e)

    def attention_view(self, session: InspectionSession, word, opacity, resolution, layer, step_only, step):
        run = session.run if session else None
        if run is None or run.attention is None or not word:
            return gr.skip(), status_html("no attention recorded yet: run with 'Record attention' on", "info")
        try:
            breakdown = {}
            if resolution and resolution != ALL:
                breakdown["resolution"] = resolution
            if layer and layer != ALL:
                breakdown["layers"] = [layer]
                breakdown.pop("resolution", None)
            if step_only:
                breakdown["steps"] = [min(max(int(step), 0), run.num_steps - 1)]
            image = self.controller.word_overlay(run, str(word), float(opacity), **breakdown)
        except USER_ERRORS as e:
            return gr.skip(), status_html(user_message(e), "error")
        what = ", ".join(f"{k} {v if not isinstance(v, list) else v[0]}" for k, v in breakdown.items()) or \
            "all steps and layers"
        return image, status_html(f"'{word}': {what}", "ok")

    def plots(self, session: InspectionSession, threshold):
        run = session.run if session else None
        if run is None:
            return None, None, status_html("run an inspection first", "info")
        if "uncond" not in run.trajectory.roles:
            return None, None, status_html("CFG 1 skips the unconditional pass: no guidance to decompose", "info")
        try:
            norm, cosine = self.controller.guidance_plots(run, float(threshold))
            stats = self.controller.guidance(run, float(threshold))
        except USER_ERRORS as e:
            return gr.skip(), gr.skip(), status_html(user_message(e), "error")
        notes = [f"{self.controller.role_label(run, r)}: " +
                 (f"adaptive guidance would stop CFG from step {s + 1}" if s is not None else
                  "cosine never reaches the threshold (CFG on throughout)") for r, s in stats.switch_step.items()]
        return norm, cosine, status_html("\n".join(notes), "ok")

    # ------------------------------------------------------------------ branch, classify, information, export

    def attribute_names(self) -> list[str]:
        return [d.name for d in self.attributes.definitions()] if self.attributes is not None else []

    def branch(self, session: InspectionSession, step, prompt, cfg, sampler, attribute=None, subject="", value=0.0):
        run = session.run if session else None
        if run is None:
            return gr.skip(), status_html("run an inspection first, then branch from one of its steps", "info")
        try:
            k = int(step)
            new_prompt = str(prompt) if str(prompt or "").strip() else None
            hooks = None
            if attribute and float(value or 0.0) != 0.0:
                if self.attributes is None:
                    raise ValueError("sliders are not available in this studio")
                from studio.controllers.attributes import SliderSetting

                base = replace(run.request, prompt=new_prompt or run.request.prompt)
                hooks = self.attributes.slider_hooks(base, [SliderSetting(attribute, str(subject or "").strip(),
                                                                          float(value))])
            request = BranchRequest(step=k, prompt=new_prompt, cfg=float(cfg),
                                    sampler=sampler if sampler != run.request.sampler else None, hooks=hooks)
            out = self.controller.branch(run, request)
        except USER_ERRORS as e:
            return gr.skip(), status_html(user_message(e), "error")
        except Exception as e:  # noqa: BLE001
            return gr.skip(), status_html(unexpected_message(e, "branch"), "error")
        how = "resumed exactly" if out.exact else "re-entered under " + out.request.sampler
        label = f"branch from step {k + 1}: {out.request.prompt[:40]} · cfg {out.request.cfg:g}" + \
            (f" · {attribute} {float(value):+g} on {subject}" if hooks is not None else "")
        return [(out.original, "original"), (out.branched, label)], \
            status_html(f"{how}" + "".join(f"\n{w}" for w in out.warnings), "warning" if out.warnings else "ok")

    def use_run_image(self, session: InspectionSession):
        run = session.run if session else None
        if run is None:
            return gr.skip(), gr.skip()
        return run.image, run.request.prompt

    def classify(self, session: InspectionSession, image, candidates, stages, seed):
        try:
            if image is None:
                raise ValueError("upload an image or press 'Use the run's image'")
            names = tuple(c.strip() for c in str(candidates or "").replace("|", "\n").splitlines() if c.strip())
            result = self.controller.classify(ClassifyRequest(image, names, stages=parse_stages(stages),
                                                              seed=int(seed or 0)))
        except USER_ERRORS as e:
            return gr.skip(), gr.skip(), status_html(user_message(e), "error")
        session.classification = result
        rows = "".join(f"<tr><td>{rank}</td><td>{escape(result.candidates[k])}</td>"
                       f"<td>{result.mean_error[k]:.5f}</td></tr>" for rank, k in enumerate(result.ranking, 1))
        table = f'<table class="studio-details"><tr><th>rank</th><th>prompt</th><th>mean error</th></tr>{rows}</table>'
        return table, self.controller.classification_plot(result), \
            status_html(f"best: {result.best} ({result.evaluations} UNet evaluations)", "ok")

    def information(self, session: InspectionSession, image, prompt, tokens, levels, samples, space="pixel"):
        try:
            if image is None:
                raise ValueError("upload an image or press 'Use the run's image'")
            words = tuple(t.strip() for t in str(tokens or "").split(",") if t.strip())
            result = self.controller.information(InformationRequest(image, str(prompt or ""), words,
                                                                    levels=int(levels), samples=int(samples),
                                                                    space=str(space)))
        except USER_ERRORS as e:
            return gr.skip(), status_html(user_message(e), "error")
        session.information, session.information_image = result, image
        gallery = [(self.controller.information_overlay(result, image), f"{result.tokens[0]} on the image")]
        gallery += [(map_figure(m.numpy(), title=name, label="nats / pixel", signed=name == "synergy"), name)
                    for name, m in result.maps.items()]
        gallery.append((self.controller.information_levels_plot(result), "per noise level"))
        return gallery, status_html(f"{result.evaluations} UNet evaluations; maps of {', '.join(result.tokens)} "
                                    f"({result.space} space)", "ok")

    def export(self, session: InspectionSession, panel, threshold):
        session = session or InspectionSession()
        folder = self.outputs / f"{time.strftime('%Y%m%d-%H%M%S')}-{panel}"
        try:
            if panel == "classifier":
                if session.classification is None:
                    raise ValueError("classify an image first")
                paths = self.controller.export_classification(session.classification, folder)
            elif panel == "information":
                if session.information is None:
                    raise ValueError("compute information maps first")
                paths = self.controller.export_information(session.information, session.information_image, folder)
            else:
                if session.run is None:
                    raise ValueError("run an inspection first")
                paths = self.controller.export(session.run, str(panel), folder, threshold=float(threshold))
        except USER_ERRORS as e:
            return gr.skip(), status_html(user_message(e), "error")
        except OSError as e:
            return gr.skip(), status_html(f"could not write the export: {e}", "error")
        return [str(p) for p in paths], status_html(f"exported {len(paths)} files to {folder}", "ok")


def _pick_word(words: list[str]) -> str | None:
    """A content word to start with: the first that is not an article or a function word."""
    skip = {"a", "an", "the", "and", "on", "at", "in", "of", "with", "background"}
    return next((w for w in words if w not in skip), words[0] if words else None)


def build_inspection_tab(handlers: InspectionHandlers, state: gr.State) -> None:
    d = handlers.defaults
    tinyworld = model_kind(handlers.controller.model) == "tinyworld"
    prompt0 = "a large red circle and a small blue square on a black background" if tinyworld else \
        "a photo of a cat sitting on a red sofa"
    words0 = list(handlers.controller.prompt_words(prompt0, d.steps))
    with gr.Row():
        with gr.Column(scale=5):
            prompt = gr.Textbox(value=prompt0, label="Prompt", elem_id="inspect_prompt")
            negative = gr.Textbox(value=d.negative_prompt, label="Negative prompt", elem_id="inspect_negative")
            with gr.Row():
                seed = gr.Number(value=3, label="Seed", precision=0, elem_id="inspect_seed")
                steps = gr.Slider(1, 150, value=d.steps, step=1, label="Steps", elem_id="inspect_steps")
                cfg = gr.Slider(0, 30, value=d.cfg, step=0.5, label="CFG scale", elem_id="inspect_cfg")
                sampler = gr.Dropdown(list(SAMPLERS), value=d.sampler, label="Sampler", elem_id="inspect_sampler")
            attention = gr.Checkbox(value=True, label="Record attention (streams the word's map)",
                                    elem_id="inspect_attention_on")
            run_btn, stop, progress, status = run_controls(
                "inspect", "Inspect", "Write a prompt and press Inspect: every step is recorded.")
        with gr.Column(scale=6):
            with gr.Row():
                image = gr.Image(label="Image (live x0 while it runs)", type="pil", format="png", interactive=False,
                                 elem_id="inspect_image", height=260)
                attn_image = gr.Image(label="Cross-attention of the word", type="pil", format="png",
                                      interactive=False, elem_id="inspect_attention", height=260)
            with gr.Row():
                word = gr.Dropdown(words0, value=_pick_word(words0), label="Word", elem_id="inspect_word")
                opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="Map opacity", elem_id="inspect_opacity")
            with gr.Row():
                resolution = gr.Dropdown([ALL], value=ALL, label="Resolution", elem_id="inspect_resolution")
                layer = gr.Dropdown([ALL], value=ALL, label="Layer", elem_id="inspect_layer")
                step_only = gr.Checkbox(value=False, label="Only the scrubbed step", elem_id="inspect_step_only")
            attn_status = gr.HTML(elem_id="inspect_attention_status")
    with gr.Accordion("Trajectory and guidance decomposition", open=True):
        scrub = gr.Slider(0, max(d.steps - 1, 1), value=0, step=1, label="Step (scrub the filmstrip)",
                          elem_id="inspect_scrub")
        caption = gr.Markdown(elem_id="inspect_step_caption")
        with gr.Row():
            x_t = gr.Image(label="x_t (noisy latents)", type="pil", interactive=False, elem_id="inspect_xt",
                           height=200)
            x0 = gr.Image(label="x0 prediction (guided)", type="pil", interactive=False, elem_id="inspect_x0",
                          height=200)
        decomposition = gr.Gallery(label="each prediction's x0 · guided · |eps_cond - eps_uncond|", columns=6,
                                   height=200, elem_id="inspect_decomposition")
        threshold = gr.Slider(0.9, 1.0, value=0.99, step=0.0005, label="Adaptive-guidance cosine threshold",
                              elem_id="inspect_threshold")
        with gr.Row():
            norm_plot = gr.Image(label="Guidance norm", type="pil", interactive=False, elem_id="inspect_norm_plot")
            cos_plot = gr.Image(label="Cosine(cond, uncond)", type="pil", interactive=False,
                                elem_id="inspect_cos_plot")
        plot_status = gr.HTML(elem_id="inspect_plot_status")
    with gr.Accordion("Branch from the scrubbed step", open=False):
        with gr.Row():
            branch_prompt = gr.Textbox(label="Prompt (empty: keep)", elem_id="inspect_branch_prompt", scale=3)
            branch_cfg = gr.Slider(0, 30, value=d.cfg, step=0.5, label="CFG scale", elem_id="inspect_branch_cfg")
            branch_sampler = gr.Dropdown(list(SAMPLERS), value=d.sampler, label="Sampler",
                                         elem_id="inspect_branch_sampler")
        names = handlers.attribute_names()
        with gr.Row(visible=bool(names)):
            branch_attribute = gr.Dropdown(["", *names], value="", label="Attribute slider (optional)",
                                           elem_id="inspect_branch_attribute")
            branch_subject = gr.Textbox(value="circle" if tinyworld else "", label="on the word",
                                        elem_id="inspect_branch_subject")
            branch_value = gr.Slider(-3, 3, value=0, step=0.1, label="value", elem_id="inspect_branch_value")
        branch_btn = gr.Button("Branch", elem_id="inspect_branch")
        branch_gallery = gr.Gallery(label="original · branch", columns=2, height=220, elem_id="inspect_branch_gallery")
        branch_status = gr.HTML(elem_id="inspect_branch_status")
    with gr.Accordion("Diffusion classifier and token information maps", open=False):
        with gr.Row():
            probe = gr.Image(label="Image to explain (upload, or use the run's)", type="pil", sources=["upload"],
                             elem_id="inspect_probe", height=200)
            with gr.Column():
                use_run = gr.Button("Use the run's image", elem_id="inspect_use_run")
                candidates = gr.Textbox(value="a circle\na square\na triangle" if tinyworld else "a cat\na dog",
                                        lines=4, label="Candidate prompts (one per line)", elem_id="inspect_candidates")
                stages = gr.Textbox(value="12:2,36:1", label="Stages samples:keep,...", elem_id="inspect_stages")
                classify_btn = gr.Button("Classify", elem_id="inspect_classify")
        with gr.Row():
            ranking = gr.HTML(elem_id="inspect_ranking")
            curves = gr.Image(label="Error per timestep", type="pil", interactive=False, elem_id="inspect_curves")
        with gr.Row():
            info_prompt = gr.Textbox(value=prompt0, label="Prompt describing the image", elem_id="inspect_info_prompt")
            tokens = gr.Textbox(value="circle, red" if tinyworld else "cat", label="One or two words (comma)",
                                elem_id="inspect_tokens")
            levels = gr.Slider(2, 50, value=12, step=1, label="Noise levels", elem_id="inspect_levels")
            samples = gr.Slider(1, 16, value=2, step=1, label="Samples per level", elem_id="inspect_samples")
            space = gr.Radio(["pixel", "latent"], value="pixel", label="Map space", elem_id="inspect_info_space",
                             info="pixel: predictions decoded, sharp at object edges; "
                                  "latent: the paper's grid, upsampled")
        info_btn = gr.Button("Information maps", elem_id="inspect_information")
        info_gallery = gr.Gallery(label="information maps", columns=4, height=260, elem_id="inspect_info_gallery")
        tools_status = gr.HTML(elem_id="inspect_tools_status")
    with gr.Accordion("Export", open=False):
        with gr.Row():
            panel = gr.Dropdown(list(EXPORT_PANELS), value="attention", label="Panel", elem_id="inspect_panel")
            export_btn = gr.Button("Export (.npz, JSON, PNG)", elem_id="inspect_export")
        files = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="inspect_files")
        export_status = gr.HTML(elem_id="inspect_export_status")

    gpu = dict(concurrency_limit=1, concurrency_id="gpu", show_progress="hidden")
    light = dict(concurrency_limit=None, concurrency_id="light", show_progress="hidden")
    attn_inputs = [state, word, opacity, resolution, layer, step_only, scrub]
    step_outputs = [x_t, x0, decomposition, caption]
    (run_btn.click(handlers.run, inputs=[state, prompt, negative, seed, steps, cfg, sampler, attention, word, opacity],
                   outputs=[image, attn_image, progress, status], **gpu)
     .then(handlers.after_run, inputs=[state, word], outputs=[scrub, word, resolution, layer], **light)
     .then(handlers.show_step, inputs=[state, scrub], outputs=step_outputs, **gpu)
     .then(handlers.plots, inputs=[state, threshold], outputs=[norm_plot, cos_plot, plot_status], **light))
    stop.click(handlers.stop, inputs=[state], outputs=[status], **light)
    prompt.blur(handlers.words, inputs=[prompt, steps], outputs=[word], **light)
    scrub.release(handlers.show_step, inputs=[state, scrub], outputs=step_outputs, **gpu)
    scrub.input(handlers.show_step, inputs=[state, scrub], outputs=step_outputs, **gpu, trigger_mode="always_last")
    # map views run one at a time, in order: in parallel a slow, older view (e.g. a scrub's aggregate map) could
    # land after a newer one (the box just ticked) and overwrite it
    view = dict(concurrency_limit=1, concurrency_id="attention_view", show_progress="hidden")
    for w in (word, opacity, resolution, layer, step_only):
        w.change(handlers.attention_view, inputs=attn_inputs, outputs=[attn_image, attn_status], **view)
    scrub.release(handlers.attention_view, inputs=attn_inputs, outputs=[attn_image, attn_status], **view)
    threshold.release(handlers.plots, inputs=[state, threshold], outputs=[norm_plot, cos_plot, plot_status], **light)
    branch_btn.click(handlers.branch, inputs=[state, scrub, branch_prompt, branch_cfg, branch_sampler,
                                              branch_attribute, branch_subject, branch_value],
                     outputs=[branch_gallery, branch_status], **gpu)
    use_run.click(handlers.use_run_image, inputs=[state], outputs=[probe, info_prompt], **light)
    classify_btn.click(handlers.classify, inputs=[state, probe, candidates, stages, seed],
                       outputs=[ranking, curves, tools_status], **gpu)
    info_btn.click(handlers.information, inputs=[state, probe, info_prompt, tokens, levels, samples, space],
                   outputs=[info_gallery, tools_status], **gpu)
    export_btn.click(handlers.export, inputs=[state, panel, threshold], outputs=[files, export_status], **light)
