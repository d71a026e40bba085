"""End-to-end: ``python launch.py`` on Tiny World, driven by Debian's Chromium (Playwright).

Types a prompt, clicks Generate, watches the live preview change, checks the
final image, the PNG and its metadata on disk, takes a screenshot (``docs/screenshot.png`` with STUDIO_UPDATE_SCREENSHOT=1),
checks that a second browser context has its own (empty) gallery, and that Stop
returns the UI to idle.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
PROMPT = "a large red circle at the top left on a black background"
SEED = 1234
STEPS = 40  # enough steps for several distinct preview frames at ~0.1 s per step
START_TIMEOUT = 240.0
RUN_TIMEOUT = 240.0
VIEWPORT = {"width": 1280, "height": 900}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"launch.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"studio did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A live studio (subprocess) on a free port; yields (url, outputs folder)."""
    if not (ROOT / "assets" / "tinyworld" / "model_index.json").is_file():
        pytest.skip("Tiny World assets are not present")
    tmp = tmp_path_factory.mktemp("studio")
    outputs, log = tmp / "outputs", tmp / "launch.log"
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--port", str(port),
                                 "--outputs", str(outputs)], cwd=tmp, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, proc, log, START_TIMEOUT)
        yield url, outputs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


def open_studio(browser, url):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url, timeout=60_000)
    page.wait_for_selector("#prompt textarea", state="visible")
    page.wait_for_selector("#generate", state="visible")
    return context, page


def set_number(page, elem_id: str, value) -> None:
    """Type into a Slider/Number component's number box and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def status_text(page) -> str:
    return page.inner_text("#status")


def preview_src(page) -> str | None:
    srcs = page.eval_on_selector_all("#preview img", "els => els.map(e => e.getAttribute('src'))")
    return srcs[-1] if srcs else None


def wait_until(predicate, timeout: float, what: str, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def fetch_image(page, src: str):
    from PIL import Image

    response = page.request.get(src)
    assert response.ok, f"GET {src} -> {response.status}"
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def test_generate_in_the_browser(studio, browser):
    import numpy as np

    from studio.outputs import read_image_settings

    url, outputs = studio
    context, page = open_studio(browser, url)
    try:
        assert page.title() == "Controllable Diffusion Studio"
        # 1. fill the form and generate
        page.fill("#prompt textarea", PROMPT)
        set_number(page, "steps", STEPS)
        set_number(page, "seed", SEED)
        assert page.locator("#steps input[type=number]").first.input_value() == str(STEPS)
        assert page.is_disabled("#stop")
        initial = preview_src(page)
        page.click("#generate")

        # 2. the preview changes while the run goes on; the page shows step k/N
        seen: list[str] = []
        steps_seen: set[str] = set()
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            src = preview_src(page)
            if src and src != initial and src not in seen:
                seen.append(src)
            progress = page.inner_text("#progress")
            if "step " in progress:
                steps_seen.add(progress.split("step ")[1].split()[0])
            if "Done" in status_text(page):
                break
            time.sleep(0.05)
        status = status_text(page)
        # the last progress and the status arrive in one update; read the progress once more after "Done"
        progress = page.inner_text("#progress")
        if "step " in progress:
            steps_seen.add(progress.split("step ")[1].split()[0])
        assert "Done: 1 image(s)" in status, f"run did not finish: {status!r}"
        assert f"seed {SEED}" in status
        assert len(seen) >= 3, f"expected at least two preview frames before the result, saw {len(seen)}"
        assert len(steps_seen) >= 2 and f"{STEPS}/{STEPS}" in steps_seen
        assert page.is_enabled("#generate") and page.is_disabled("#stop")

        # 3. the final image is a real picture, not a single colour
        final = fetch_image(page, preview_src(page))
        pixels = np.asarray(final).astype(np.int16)
        assert final.size == (64, 64)
        assert pixels.std() > 5 and (pixels.max(axis=(0, 1)) - pixels.min(axis=(0, 1))).max() > 40

        # 4. this session's gallery shows it; the PNG on disk carries its settings
        wait_until(lambda: page.locator("#gallery img").count() == 1, 30, "one image in the gallery")
        pngs = sorted(outputs.glob("*/*.png"))
        assert len(pngs) == 1, pngs
        settings = read_image_settings(pngs[0])
        assert settings.prompt == PROMPT and settings.seed == SEED and settings.steps == STEPS
        assert pngs[0].name.endswith(f"-{SEED}.png")
        on_disk = np.asarray(read_png(pngs[0])).astype(np.int16)
        assert np.abs(on_disk - pixels).max() <= 2  # the page shows the saved image

        # 5. screenshot: README's docs/screenshot.png when STUDIO_UPDATE_SCREENSHOT=1, else a temporary file
        shot = ROOT / "docs" / "screenshot.png" if os.environ.get("STUDIO_UPDATE_SCREENSHOT") == "1" \
            else outputs.parent / "screenshot.png"
        shot.parent.mkdir(exist_ok=True)
        page.mouse.move(0, 0)
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000

        # 6. a second browser context is another session: its gallery is empty
        other_context, other = open_studio(browser, url)
        try:
            time.sleep(1.0)
            assert other.locator("#gallery img").count() == 0
            assert other.input_value("#prompt textarea") == ""
            other.click("#seed_reuse")  # nothing to reuse in this session
            wait_until(lambda: "No finished run" in other.inner_text("body"), 30, "the 'no finished run' warning")
            assert other.locator("#seed input").first.input_value() == "-1"

            # a file that is not an image: a clear warning, the form untouched
            junk = outputs.parent / "notes.txt"
            junk.write_text("not an image")
            other.set_input_files("#settings_file input[type=file]", str(junk))
            wait_until(lambda: "Cannot load settings from notes.txt" in status_text(other), 60, "the upload warning")
            assert "not an image file" in other.locator(".toast-body").first.inner_text()
            assert "Traceback" not in other.inner_text("body")
            assert other.input_value("#prompt textarea") == ""

            # 7. Stop ends a long run within a step and the UI is idle again
            other.fill("#prompt textarea", "a blue square")
            set_number(other, "steps", 150)
            other.click("#generate")
            wait_until(lambda: "step " in other.inner_text("#progress") and other.is_enabled("#stop"), 120,
                       "the long run to start")
            other.click("#stop")
            wait_until(lambda: "Stopped at step" in status_text(other), 60, "the run to stop")
            stopped = status_text(other)
            assert other.is_enabled("#generate") and other.is_disabled("#stop")
            assert "/150" in stopped
            assert other.locator("#gallery img").count() == 0
        finally:
            other_context.close()

        # the first session still has its image; nothing else was saved
        assert page.locator("#gallery img").count() == 1
        assert len(sorted(outputs.glob("*/*.png"))) == 1

        # 8. the history lists the run; reopening restores its settings in the Generate tab
        page.fill("#prompt textarea", "something else")
        set_number(page, "seed", 7)
        page.get_by_role("tab", name="History").click()
        wait_until(lambda: page.locator("#history_gallery button.thumbnail-item").count() == 1, 60,
                   "the run in the history")
        page.locator("#history_gallery button.thumbnail-item").first.click()
        wait_until(lambda: PROMPT in page.inner_text("#history_details"), 30, "the run's details")
        page.click("#history_reopen")
        wait_until(lambda: "Reopened run #1" in status_text(page), 30, "the run to reopen")
        assert page.is_visible("#prompt textarea") and not page.is_visible("#history_gallery")  # back on Generate
        assert page.input_value("#prompt textarea") == PROMPT
        assert page.locator("#seed input").first.input_value() == str(SEED)
        assert page.locator("#steps input[type=number]").first.input_value() == str(STEPS)
    finally:
        context.close()


def read_png(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def image_src(page, elem_id: str) -> str | None:
    srcs = page.eval_on_selector_all(f"#{elem_id} img", "els => els.map(e => e.getAttribute('src'))")
    return srcs[-1] if srcs else None


def screenshot_if_asked(page, name: str, full_page: bool = False) -> None:
    """With STUDIO_UPDATE_SCREENSHOT=1, save the page as docs/NAME.png (the README's pictures)."""
    if os.environ.get("STUDIO_UPDATE_SCREENSHOT") == "1":
        page.mouse.move(0, 0)
        page.screenshot(path=str(ROOT / "docs" / f"{name}.png"), full_page=full_page)


def paint_stroke(page, editor_id: str, start: tuple[float, float], step: tuple[float, float], moves: int = 8) -> None:
    """Pick the brush of an ImageEditor and drag a stroke from ``start`` (pixels from the canvas centre) in
    ``moves`` moves of ``step``."""
    page.locator(f"#{editor_id} button[aria-label='Brush']").first.click()
    box = page.locator(f"#{editor_id} canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2 + start[0], box["y"] + box["height"] / 2 + start[1]
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, moves + 1):
        page.mouse.move(x + step[0] * k, y + step[1] * k)
        time.sleep(0.05)
    page.mouse.up()


def test_attribute_slider_in_the_browser(studio, browser):
    """Drag the size slider: the image follows (live drafts, then a full render on release) beside the image at
    zero; then a sweep fills the filmstrip and offers an animated WebP."""
    import numpy as np

    url, _ = studio
    context, page = open_studio(browser, url)
    try:
        page.get_by_role("tab", name="Attributes").click()
        page.wait_for_selector("#attr_value input[type=range]", state="visible")
        assert page.input_value("#attr_subject textarea") == "circle"
        set_number(page, "attr_steps", 12)

        # 1. drag the slider to the right with the mouse (press, move in steps, release)
        track = page.locator("#attr_value input[type=range]").first
        box = track.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] / 2, y)
        page.mouse.down()
        for k in range(1, 6):
            page.mouse.move(box["x"] + box["width"] * (0.5 + 0.08 * k), y)
            time.sleep(0.2)
        page.mouse.up()
        wait_until(lambda: "done:" in page.inner_text("#attr_status"), RUN_TIMEOUT, "the full render on release")
        assert "Traceback" not in page.inner_text("body")
        value = float(page.locator("#attr_value input[type=number]").first.input_value())
        assert value > 0.5
        moved = fetch_image(page, image_src(page, "attr_image"))
        zero = fetch_image(page, image_src(page, "attr_zero"))
        diff = np.abs(np.asarray(moved, dtype=np.int16) - np.asarray(zero, dtype=np.int16))
        assert moved.size == (64, 64) and diff.mean() > 1.0, "the image did not follow the slider"

        # 2. a second value changes the image again
        first_src = image_src(page, "attr_image")
        set_number(page, "attr_value", -1.5)
        page.click("#attr_render")
        wait_until(lambda: image_src(page, "attr_image") != first_src and "-1.50" in page.inner_text("#attr_status"),
                   RUN_TIMEOUT, "the render at -1.5")

        # 3. a sweep: nine frames in the filmstrip and a WebP to download
        page.click("#attr_sweep")
        wait_until(lambda: page.locator("#attr_filmstrip img").count() >= 9, RUN_TIMEOUT, "nine sweep frames")
        assert "one batched run" in page.inner_text("#attr_status")
        link = page.locator("#attr_animation a").first
        wait_until(lambda: link.count() and ".webp" in (link.get_attribute("href") or ""), 30, "the WebP link")
        body = page.request.get(link.get_attribute("href")).body()
        assert body[:4] == b"RIFF" and b"WEBP" in body[:16]
        screenshot_if_asked(page, "attributes")

        # 4. a subject that is not in the prompt: a clear message, no traceback
        page.fill("#attr_subject textarea", "hexagon")
        page.click("#attr_render")
        wait_until(lambda: "does not occur" in page.inner_text("#attr_status"), 60, "the subject error")
        assert "Traceback" not in page.inner_text("body")
    finally:
        context.close()


def test_composition_in_the_browser(studio, browser):
    """Compose two weighted parts (composed beside monolithic at the same seed), set the per-stage sampler and CFG
    with one button, then draw a region on the canvas, use it as region 1's box and compose with regions."""
    url, _ = studio
    context, page = open_studio(browser, url)
    try:
        page.get_by_role("tab", name="Composition").click()
        page.wait_for_selector("#compose_part1 textarea", state="visible")
        set_number(page, "compose_steps", 8)

        # 1. two parts, the second weighted: the composed prompt follows the slider
        set_number(page, "compose_weight2", 1.5)
        wait_until(lambda: page.input_value("#compose_prompt textarea") == "a red circle AND a blue square :1.5",
                   30, "the composed prompt")
        page.click("#compose_run")
        wait_until(lambda: "composed:" in page.inner_text("#compose_status"), RUN_TIMEOUT, "the composed run")
        assert "monolithic: a red circle and a blue square" in page.inner_text("#compose_status")
        composed = fetch_image(page, image_src(page, "compose_image"))
        mono = fetch_image(page, image_src(page, "compose_mono"))
        assert composed.size == mono.size == (64, 64)

        # 2. the per-stage accordion's button sets the sampler and CFG under which later stages take hold
        page.get_by_text("Per-stage prompts (timeline)", exact=True).click()
        page.click("#compose_stage_settings")
        wait_until(lambda: page.input_value("#compose_sampler input") == "Euler a", 30, "the stage sampler")
        assert float(page.locator("#compose_cfg input[type=number]").first.input_value()) == 7.0

        # 3. a region drawn on the canvas becomes region 1's box
        page.get_by_text("Regions", exact=True).click()
        page.locator("#compose_use_regions input[type=checkbox]").check()
        page.fill("#compose_part1 textarea", "a gray background")
        page.fill("#compose_part2 textarea", "")
        page.fill("#compose_region1 textarea", "a red circle")
        page.fill("#compose_region2 textarea", "a blue square")
        paint_stroke(page, "compose_canvas", (-60, -60), (5, 15))
        before = page.input_value("#compose_region1_box textarea")
        page.click("#compose_use_drawing")
        wait_until(lambda: "from the drawing" in page.inner_text("#compose_status"), 30, "the drawn box")
        drawn = page.input_value("#compose_region1_box textarea")
        x0, y0, x1, y1 = (float(v) for v in drawn.split(","))
        assert drawn != before and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        page.click("#compose_run")
        wait_until(lambda: "composed: a gray background" in page.inner_text("#compose_status"), RUN_TIMEOUT,
                   "the regional run")
        assert "a red circle and a blue square" in page.inner_text("#compose_status")
        assert "Traceback" not in page.inner_text("body")
        screenshot_if_asked(page, "composition", full_page=True)
    finally:
        context.close()


def test_inspection_in_the_browser(studio, browser):
    """Inspect a run: the word's attention map streams and lands on the image, the scrubber moves the filmstrip,
    and a map of the scrubbed step alone differs from the aggregate."""
    url, _ = studio
    context, page = open_studio(browser, url)
    try:
        page.get_by_role("tab", name="Inspection").click()
        page.wait_for_selector("#inspect_prompt textarea", state="visible")
        set_number(page, "inspect_steps", 10)
        page.click("#inspect_run")
        wait_until(lambda: "recorded 10 steps" in page.inner_text("#inspect_status"), RUN_TIMEOUT, "the inspection")
        wait_until(lambda: "step 10 / 10" in page.inner_text("#inspect_step_caption"), 60, "the last step's panels")
        overlay_src = image_src(page, "inspect_attention")
        overlay = fetch_image(page, overlay_src)
        assert overlay.size == (64, 64)
        wait_until(lambda: page.locator("#inspect_decomposition img").count() >= 4, 60, "the decomposition panels")
        wait_until(lambda: image_src(page, "inspect_cos_plot"), 60, "the cosine plot")

        # scrub to step 3: the filmstrip follows; the map of that step alone is not the aggregate
        x0_last = image_src(page, "inspect_x0")
        set_number(page, "inspect_scrub", 2)
        wait_until(lambda: "step 3 / 10" in page.inner_text("#inspect_step_caption"), 60, "the scrubbed step")
        assert image_src(page, "inspect_x0") != x0_last
        page.locator("#inspect_step_only input[type=checkbox]").check()
        # the status and the picture are separate outputs: wait for both before comparing
        wait_until(lambda: "steps 2" in page.inner_text("#inspect_attention_status")
                   and image_src(page, "inspect_attention") != overlay_src, 60, "the one-step map")
        single = fetch_image(page, image_src(page, "inspect_attention"))
        assert single.tobytes() != overlay.tobytes()
        assert "Traceback" not in page.inner_text("body")
        screenshot_if_asked(page, "inspection", full_page=True)

        # information maps of the run's image: drawn in pixel space, the word's map over the image first
        page.get_by_text("Diffusion classifier and token information maps").click()
        page.click("#inspect_use_run")
        wait_until(lambda: image_src(page, "inspect_probe"), 60, "the run's image in the probe")
        set_number(page, "inspect_levels", 3)
        set_number(page, "inspect_samples", 1)
        page.click("#inspect_information")
        wait_until(lambda: "(pixel space)" in page.inner_text("#inspect_tools_status"), RUN_TIMEOUT, "the maps")
        assert page.locator("#inspect_info_gallery img").count() >= 3
        assert "Traceback" not in page.inner_text("body")
    finally:
        context.close()


def test_inpainting_in_the_browser(studio, browser):
    """Draw a Tiny World scene, paint a mask over its right half, inpaint: the left half stays the input's pixels and
    the result is saved with its editing settings."""
    import numpy as np

    from studio.outputs import read_image_settings

    url, outputs = studio
    context, page = open_studio(browser, url)
    try:
        page.get_by_role("tab", name="Editing").click()
        page.wait_for_selector("#edit_scene", state="visible")
        set_number(page, "edit_scene_seed", 7)
        page.click("#edit_scene")
        wait_until(lambda: image_src(page, "edit_source"), 30, "the scene")
        source = fetch_image(page, image_src(page, "edit_source"))
        paint_stroke(page, "edit_mask", (50, -80), (0, 20))  # down the right of the centred image's middle
        set_number(page, "edit_steps", 10)
        page.click("#edit_run")
        wait_until(lambda: "inpaint done" in page.inner_text("#edit_status"), RUN_TIMEOUT, "the inpainting")
        assert "Traceback" not in page.inner_text("body")
        result = fetch_image(page, image_src(page, "edit_result"))
        assert result.size == source.size == (64, 64)
        a, b = np.asarray(result, dtype=np.int16), np.asarray(source, dtype=np.int16)
        assert np.array_equal(a[:, :32], b[:, :32]), "outside the painted stroke the input must be kept"
        saved = sorted(outputs.rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
        assert read_image_settings(saved).controls["editing"]["mode"] == "inpaint"
    finally:
        context.close()


def test_prompt_to_prompt_in_the_browser(studio, browser):
    """Swap a word with the noise-contrast mask: one progress bar covers the mask's half render of the source and
    the edit, and the gallery shows source, edit and mask."""
    url, _ = studio
    context, page = open_studio(browser, url)
    try:
        page.get_by_role("tab", name="Editing").click()
        page.get_by_text("Prompt-to-prompt: edit a generated image").click()
        page.wait_for_selector("#edit_p2p_run", state="visible")
        page.fill("#edit_prompt textarea", "a large red circle on a black background")
        page.fill("#edit_p2p_target textarea", "a large blue circle on a black background")
        page.get_by_label("noise contrast of the two prompts", exact=False).check()
        set_number(page, "edit_steps", 10)
        page.click("#edit_p2p_run")
        wait_until(lambda: "prompt-to-prompt done" in page.inner_text("#edit_p2p_status"), RUN_TIMEOUT,
                   "the prompt-to-prompt edit")
        bar = page.locator("#edit_p2p_progress .studio-progress")
        done, total = int(bar.get_attribute("data-step")), int(bar.get_attribute("data-total"))
        assert done == total > 10, "the half render and the 10 edit steps in one bar"
        assert "noise-contrast mask" in page.inner_text("#edit_p2p_status")
        assert page.locator("#edit_p2p_gallery img").count() >= 3
        assert "Traceback" not in page.inner_text("body")
    finally:
        context.close()


def test_concept_edit_in_the_browser_is_this_session_only(studio, browser):
    """Apply "circle -> square" in one browser session and render before/after; a second session at the same time
    still has the original model; Revert returns the first to it."""
    url, _ = studio
    mine, page = open_studio(browser, url)
    theirs, other = open_studio(browser, url)
    try:
        for p in (page, other):
            p.get_by_role("tab", name="Editing").click()
            p.get_by_text("Concept edits of the model").click()
            p.wait_for_selector("#edit_concept_apply", state="visible")
        page.click("#edit_concept_apply")
        wait_until(lambda: "applied" in page.inner_text("#edit_concept_status"), RUN_TIMEOUT, "the concept edit")
        assert "circle → square" in page.inner_text("#edit_concept_status")
        page.fill("#edit_prompt textarea", "a large red circle on a black background")
        set_number(page, "edit_steps", 10)
        page.click("#edit_concept_compare")
        wait_until(lambda: "rendered before/after" in page.inner_text("#edit_concept_status"), RUN_TIMEOUT,
                   "the before/after render")
        assert page.locator("#edit_concept_gallery img").count() >= 2
        other.click("#edit_concept_compare")
        wait_until(lambda: "apply or load a concept edit first" in other.inner_text("#edit_concept_status"), 30,
                   "the other session's refusal")
        page.click("#edit_concept_revert")
        wait_until(lambda: "reverted" in page.inner_text("#edit_concept_status"), 30, "the revert")
        assert "Traceback" not in page.inner_text("body") + other.inner_text("body")
    finally:
        mine.close()
        theirs.close()


def test_personalization_training_in_the_browser(studio, browser, tmp_path):
    """Upload three images, start a textual-inversion run, watch its progress bar move, Stop it: the status says it
    stopped and can resume; nothing was learned into the session."""
    url, _ = studio
    from PIL import Image

    files = []
    for i in range(3):
        im = Image.new("RGB", (64, 64), (20, 20, 20))
        im.paste((220, 40 + 60 * i, 40), (16, 16, 44, 44))
        files.append(tmp_path / f"img{i}.png")
        im.save(files[-1])
    context, page = open_studio(browser, url)
    try:
        page.get_by_role("tab", name="Personalization").click()
        page.wait_for_selector("#pers_run", state="visible")
        page.locator("#pers_images input[type=file]").set_input_files([str(f) for f in files])
        wait_until(lambda: page.locator("#pers_images img").count() >= 3, 60, "the uploaded images")
        set_number(page, "pers_steps", 400)
        page.click("#pers_run")

        def step():
            found = page.locator("#pers_progress .studio-progress").get_attribute("data-step")
            return int(found or 0)

        wait_until(lambda: step() >= 2, RUN_TIMEOUT, "training progress")
        first = step()
        wait_until(lambda: step() > first, 60, "the progress bar to move")
        page.click("#pers_stop")
        wait_until(lambda: "stopped" in page.inner_text("#pers_status"), 60, "the stop")
        assert "resume" in page.inner_text("#pers_status")
        assert "Traceback" not in page.inner_text("body")
    finally:
        context.close()
