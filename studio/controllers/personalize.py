"""The personalization workbench's controller (no UI imports): teach the model a concept from a few images, then
generate with it.

* :meth:`PersonalizationController.train`: textual inversion or per-stage inversion (ProSpect) of a placeholder
  token; progress, previews, cancel; resumable from a checkpoint (see :mod:`studio.personalization.training`).
* :meth:`PersonalizationController.generate`: a run on a private copy of the model that knows the given concepts
  (the shared model never learns a token); per-stage concepts take the stages the request gives them.
* :meth:`train_lora`: DreamBooth-style LoRA (peft) with the token; LoRA files (ours or external diffusers, kohya,
  A1111 ones) are merged, several at once with a scale each, into a copy for a run.
* :meth:`save` / :meth:`load`: diffusers and A1111 embedding files; :meth:`save_lora` / :meth:`load_lora`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from studio.composition.stages import NUM_STAGES
from studio.engine import CancelToken, GenerationRequest, InvalidRequest, RunHooks
from studio.personalization.formats import load_concept, save_concept
from studio.personalization.lora import LoraResult, LoraSpec, LoraWeights, apply_loras, load_lora, save_lora, train_lora
from studio.personalization.prospect import check_stage_set, prospect_edit
from studio.personalization.tokens import LearnedConcept, personalized_copy
from studio.personalization.training import TrainingResult, TrainingSpec, train_concept

from .generate import GenerateController, GenerateOutcome, ProgressCallback, Saver

WORKBENCH = "personalization"


@dataclass(frozen=True)
class TrainConceptRequest:
    """Learn ``spec.token`` from ``images`` (3 to 20)."""

    images: tuple[Image.Image, ...]
    spec: TrainingSpec


@dataclass(frozen=True)
class ConceptUse:
    """A concept in a generation. For a per-stage concept, ``stages`` (1..10, sampling order) take the concept and
    the others read ``replacement`` in its place (default: its initializer word)."""

    concept: LearnedConcept
    stages: tuple[int, ...] = tuple(range(1, NUM_STAGES + 1))
    replacement: str = ""

    def settings(self) -> dict:
        out = {"token": self.concept.token, "kind": self.concept.kind, "digest": self.concept.digest(),
               "steps": self.concept.steps}
        if self.concept.kind == "prospect":
            out |= {"stages": list(self.stages), "replacement": self.replacement or self.concept.init_word}
        return out


@dataclass(frozen=True)
class PersonalizedRequest:
    """``base`` with learned ``concepts`` and ``loras`` (``(LoraWeights, scale)`` pairs, merged in order)."""

    base: GenerationRequest
    concepts: tuple[ConceptUse, ...] = field(default_factory=tuple)
    loras: tuple[tuple[LoraWeights, float], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class TrainLoraRequest:
    images: tuple[Image.Image, ...]
    spec: LoraSpec


class PersonalizationController:
    """Personalization on ``model``; ``generator`` (optional) is the shared run-and-save path; ``checkpoints``
    (a folder) makes training resumable across calls (one checkpoint per token and method)."""

    def __init__(self, model, store: Saver | None = None, *, generator: GenerateController | None = None,
                 checkpoints: Path | None = None):
        self.model = model
        self.generator = generator or GenerateController(model, store)
        self.checkpoints = Path(checkpoints) if checkpoints is not None else None

    def defaults(self) -> GenerationRequest:
        return self.generator.defaults()

    # ---- training

    def checkpoint_path(self, spec: TrainingSpec) -> Path | None:
        if self.checkpoints is None:
            return None
        key = hashlib.sha256(f"{self.model.weights_hash}:{spec.token}:{spec.method}".encode()).hexdigest()[:12]
        return self.checkpoints / f"{spec.method}-{spec.token.strip('<>')}-{key}.pt"

    def train(self, request: TrainConceptRequest, *, cancel: CancelToken | None = None,
              on_progress: Callable[[int, int, float], None] | None = None,
              on_preview: Callable[[Image.Image, int], None] | None = None, resume: bool = True) -> TrainingResult:
        """Train; a cancelled run keeps its last checkpoint (when the controller has a checkpoints folder) and a
        later call with the same request resumes from it (``resume=False`` starts over)."""
        if not isinstance(request, TrainConceptRequest) or not isinstance(request.spec, TrainingSpec):
            raise InvalidRequest("expected a TrainConceptRequest(images, TrainingSpec)")
        path = self.checkpoint_path(request.spec)
        if path is not None and not resume:
            path.unlink(missing_ok=True)
        return train_concept(self.model, list(request.images), request.spec, cancel=cancel,
                             on_progress=on_progress, on_preview=on_preview, checkpoint=path)

    def train_lora(self, request: TrainLoraRequest, *, cancel: CancelToken | None = None,
                   on_progress: Callable[[int, int, float], None] | None = None) -> LoraResult:
        if not isinstance(request, TrainLoraRequest) or not isinstance(request.spec, LoraSpec):
            raise InvalidRequest("expected a TrainLoraRequest(images, LoraSpec)")
        return train_lora(self.model, list(request.images), request.spec, cancel=cancel, on_progress=on_progress)

    # ---- generation

    def model_with(self, concepts, loras=()) -> object:
        """A private copy of the model that knows ``concepts`` (LearnedConcept or ConceptUse items) with ``loras``
        merged."""
        learned = [c.concept if isinstance(c, ConceptUse) else c for c in concepts]
        tokens = [c.token for c in learned] + [lo.concept.token for lo, _ in loras if lo.concept is not None]
        if len(set(tokens)) != len(tokens):
            raise InvalidRequest("two concepts use the same token; rename one", "concepts")
        base = apply_loras(self.model, list(loras)) if loras else self.model
        return personalized_copy(base, learned) if learned else base

    def generate(self, request: PersonalizedRequest, *, save: bool = True, cancel: CancelToken | None = None,
                 on_preview=None, on_progress: ProgressCallback | None = None) -> GenerateOutcome:
        # 1. validate
        if not isinstance(request, PersonalizedRequest) or not isinstance(request.base, GenerationRequest):
            raise InvalidRequest("expected a PersonalizedRequest(GenerationRequest, concepts)")
        uses = tuple(request.concepts)
        if not all(isinstance(u, ConceptUse) for u in uses):
            raise InvalidRequest("concepts must be ConceptUse items", "concepts")
        base = self.generator.prepare(request.base)
        per_stage = [u for u in uses if u.concept.kind == "prospect" and u.concept.token in base.prompt]
        if len(per_stage) > 1:
            raise InvalidRequest("one per-stage concept per prompt", "concepts")
        for u in uses:
            if u.concept.kind == "prospect":
                check_stage_set(u.stages)
        # 2. a private copy that knows the tokens, the per-stage prompts as an embedding edit
        loras = tuple(request.loras)
        if not all(isinstance(lo, LoraWeights) and isinstance(sc, (int, float)) for lo, sc in loras):
            raise InvalidRequest("loras must be (LoraWeights, scale) pairs", "loras")
        copy = self.model_with(uses, loras)
        hooks = RunHooks()
        if per_stage:
            u = per_stage[0]
            hooks.embedding_edits.append(prospect_edit(copy, base.sampler, base.steps, base.prompt, u.concept,
                                                       u.stages, u.replacement))
        runner = self.generator.for_model(copy)
        runner = runner if save else runner.with_store(None)
        controls = {"personalization": {"concepts": [u.settings() for u in uses],
                                        "loras": [{"name": lo.name, "scale": float(sc), "digest": lo.digest(),
                                                   "rank": lo.rank} for lo, sc in loras]}}
        return runner.run(base, cancel=cancel, on_preview=on_preview, on_progress=on_progress, controls=controls,
                          workbench=WORKBENCH, hooks=hooks)

    # ---- files

    @staticmethod
    def save(concept: LearnedConcept, path: Path, fmt: str = "diffusers") -> Path:
        return save_concept(concept, path, fmt)

    @staticmethod
    def load(path: Path, token: str | None = None) -> LearnedConcept:
        """A diffusers or A1111 embedding (its width is checked when it is used with the model)."""
        return load_concept(path, token)

    @staticmethod
    def save_lora(lora: LoraWeights, path: Path, fmt: str = "diffusers") -> Path:
        return save_lora(lora, path, fmt)

    def load_lora(self, path: Path) -> LoraWeights:
        """A diffusers, kohya or A1111 LoRA, checked against this model's layers."""
        return load_lora(path, self.model)
