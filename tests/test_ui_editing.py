"""The Editing tab's handlers, without a browser: the painted mask reaches the controller, results stream, bad
input is a message."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.controllers.edit import EditingController
from studio.ui.editing_tab import EditingHandlers, EditingSession, painted_mask

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def handlers(tiny_model):
    return EditingHandlers(EditingController(tiny_model))


def form(image, editor, mode="inpaint", **over):
    values = dict(mode=mode, image=image, editor=editor, prompt="a blue square", negative="", seed=1, steps=3,
                  cfg=5.0, sampler="DPM++ 2M", strength=1.0, feather=2, side="right", pixels=16)
    values.update(over)
    return list(values.values())


def editor_with_paint(handlers, image):
    value = handlers.to_editor(image)
    layer = np.zeros((*value["background"].size[::-1], 4), np.uint8)
    layer[:, layer.shape[1] // 2:, 3] = 255  # the right half painted
    value["layers"] = [layer]
    return value


def test_inpaint_from_a_painted_editor(handlers):
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    editor = editor_with_paint(handlers, image)
    assert editor["background"].size == (256, 256)  # shown enlarged for painting
    mask = painted_mask(editor)
    assert mask.shape == (256, 256) and mask[:, 200].min() == 1.0 and mask[:, 10].max() == 0.0
    frames = list(handlers.run(EditingSession(), True, *form(image, editor)))
    result, status = frames[-1][0], frames[-1][2]
    assert "inpaint done (64x64, seed 1)" in status
    assert np.array_equal(np.asarray(result)[:, :24], np.asarray(image)[:, :24])  # unpainted side kept


def test_other_modes_and_messages(handlers):
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    frames = list(handlers.run(EditingSession(), True, *form(image, handlers.to_editor(image), mode="outpaint")))
    assert frames[-1][0].size == (80, 64) and "outpaint done (80x64" in frames[-1][2]
    frames = list(handlers.run(EditingSession(), True, *form(image, None, mode="img2img", strength=0.5)))
    assert "img2img done" in frames[-1][2]
    assert "paint over the region" in list(handlers.run(EditingSession(), True, *form(image, handlers.to_editor(image))))[-1][2]
    assert "upload an input image" in list(handlers.run(EditingSession(), True, *form(None, None)))[-1][2]
    assert "seed must be a fixed number" in list(handlers.run(EditingSession(), True, *form(image, None, mode="img2img",
                                                                                        seed=-1)))[-1][2]


def p2p(handlers, *args):
    """(gallery, status) of the handler's last yield."""
    frames = list(handlers.prompt_to_prompt(*args))
    return frames[-1][0], frames[-1][2]


def test_prompt_to_prompt_from_the_tab(handlers):
    gallery, status = p2p(handlers, EditingSession(), True, "a blue square", "a green square", "", 2, 3, 5.0, "DPM++ 2M", 0.8, 0.4,
                                                "square", 2.0, True)
    assert [caption for _, caption in gallery] == ["source", "edited", "local-blend mask (noise contrast)"]
    assert "noise-contrast mask" in status  # auto: the prompts differ
    gallery, status = p2p(handlers, EditingSession(), True, "a blue square", "a green square", "", 2, 3, 5.0,
                          "DPM++ 2M", 0.8, 0.4, "square", 2.0, True, False, "", "attention")
    assert [caption for _, caption in gallery] == ["source", "edited"] and "local blend on green" in status
    _, status = p2p(handlers, EditingSession(), True, "a blue square", "", "", 2, 3, 5.0, "DPM++ 2M", 0.8, 0.4, "", 1.0, True)
    assert "write the edited prompt" in status
    _, status = p2p(handlers, EditingSession(), True, "a blue square", "a red square", "", 2, 3, 5.0, "DPM++ 2M", 0.8, 0.4,
                                          "hexagon", 2.0, True)
    assert "does not occur" in status
    _, status = p2p(handlers, EditingSession(), True, "a blue square", "a blue square", "", 2, 3, 5.0,
                                          "DPM++ 2M", 0.8, 0.4, "square", 2.0, True, False, "", "contrast")
    assert "use the attention mask" in status
    shares = []
    for grow in ("0", "2"):
        gallery, status = p2p(handlers, EditingSession(), True, "a blue square", "a green square", "", 2, 3, 5.0,
                              "DPM++ 2M", 0.8, 0.4, "", 1.0, True, False, "", "contrast", grow)
        assert gallery[2][1] == "local-blend mask (noise contrast)"
        shares.append(int(status.split("noise-contrast mask (")[1].split("%")[0]))
    assert shares[1] > shares[0] and "widened by 2 latent pixels" in status  # the widened mask covers more
    assert handlers.mask_grow_field("attention")["interactive"] is False
    assert handlers.mask_grow_field("auto")["interactive"] is True


def test_prompt_to_prompt_streams_progress_and_stops(handlers):
    """The contrast mask's half render of the source and the edit count as one progress bar; Stop ends the run
    with a message and the tab works again."""
    session = EditingSession()
    args = ("a blue square", "a green square", "", 2, 8, 5.0, "DPM++ 2M", 0.8, 0.4, "", 1.0, True, False, "",
            "contrast")
    frames = list(handlers.prompt_to_prompt(session, True, *args))
    bars = [f[1] for f in frames[:-1]]
    assert bars and all("/" in bar for bar in bars)  # progress while it ran
    assert "prompt-to-prompt done" in frames[-1][2] and session.cancel is None
    final_total = int(frames[-1][1].split('data-total="')[1].split('"')[0])
    assert final_total > 8 and f'data-step="{final_total}"' in frames[-1][1]  # half render + 8 edit steps, all done
    gen = handlers.prompt_to_prompt(session, True, *args[:4], 60, *args[5:])
    first = next(gen)
    assert session.cancel is not None and "/" in first[1]
    handlers.stop(session)
    rest = list(gen)
    assert "stopped" in rest[-1][2] and not isinstance(rest[-1][0], list) and session.cancel is None
    assert "prompt-to-prompt done" in p2p(handlers, session, True, *args)[1]


def test_invert_then_prompt_to_prompt_on_the_real_image(handlers):
    session = EditingSession()
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    _, status = p2p(handlers, session, True, "a blue square", "a green square", "", 2, 3, 5.0, "DDIM",
                                          0.8, 0.4, "", 1.0, True, True)
    assert "invert the input image first" in status
    frames = list(handlers.invert(session, True, image, "a blue square", "", 2, 3, 5.0, True, 2))
    reconstruction, status = frames[-1][0], frames[-1][2]
    assert reconstruction.size == (64, 64) and "reconstruction PSNR" in status and "null-text at CFG 5" in status
    assert session.inverted is not None and session.inverted.null_embeddings.shape[0] == 3
    gallery, status = p2p(handlers, session, True, "ignored", "a green square", "", 2, 3, 5.0, "DDIM",
                                                0.8, 0.4, "", 1.0, True, True)
    assert [c for _, c in gallery] == ["source", "edited", "local-blend mask (noise contrast)"]
    assert "prompt-to-prompt done" in status and "widened by 1 latent pixel)" in status  # auto, inverted: widened
    gallery, status = p2p(handlers, session, True, "ignored", "a green square", "", 2, 3, 5.0, "DDIM",
                                                0.8, 0.4, "", 1.0, True, True, "", "contrast")
    assert [c for _, c in gallery] == ["source", "edited", "local-blend mask (noise contrast)"]
    assert gallery[2][0].size == (64, 64) and "noise-contrast mask" in status
    assert "upload an input image" in list(handlers.invert(EditingSession(), True, None, "x", "", 2, 3, 5.0, False,
                                                           2))[-1][2]
