"""The engine: one denoising loop that every technique plugs into.

    from studio.models import load_model
    from studio.engine import Engine, GenerationRequest

    engine = Engine(load_model("tinyworld"))
    result = engine.generate(GenerationRequest(prompt="a red house", steps=20))
    result.images[0].save("out.png")

Techniques plug in through :class:`RunHooks` (embedding edits, a guidance
combiner, attention processors, step callbacks); everything is installed for one
run and removed in ``finally``. A :class:`CancelToken` stops a run before the next
UNet call (raising :class:`Cancelled`). A :class:`LatentCache` records a run so a
later run can resume from step k with changed cfg, prompts or hooks.
"""

from .cache import LatentCache
from .conditioning import Conditioning, encode_prompts
from .engine import Engine
from .hooks import ClassicCFG, ComposableCFG, EmbeddingEdit, GuidanceCombiner, LatentEdit, RunHooks, extra_role
from .preview import LatentPreviewer, PreviewStream, PreviewThrottle
from .request import (
    Cancelled, CancelToken, GenerationRequest, GenerationResult, InvalidRequest, StartLatents, StepEvent,
)
from .samplers import SAMPLERS, make_scheduler

__all__ = [
    "SAMPLERS", "CancelToken", "Cancelled", "ClassicCFG", "ComposableCFG", "Conditioning", "EmbeddingEdit", "Engine",
    "GenerationRequest", "GenerationResult", "GuidanceCombiner", "InvalidRequest", "LatentCache", "LatentEdit",
    "LatentPreviewer",
    "PreviewStream", "PreviewThrottle", "RunHooks", "StartLatents",
    "StepEvent", "encode_prompts", "extra_role", "make_scheduler",
]
