"""The demo page (``python -m avgen app``, :mod:`avgen.app`): its settings block, request handling (an error
is shown on the page, never raised), where outputs go, and one run in a real browser (headless Chromium driven
by selenium) on a tiny VTA-LDM trained for two steps."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avgen.app import AppOptions, Tab, build_app, generate, load_pipelines, new_folder
from avgen.errors import ConfigError
from avgen.media import read_clip, write_mp4
from tests.conftest import REPO, run_cli

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def sounding_clip(path: Path, seconds: float = 1.0, fps: int = 8, sample_rate: int = 16000) -> Path:
    """A clip with a white square that appears at the middle frame and a click at the same time."""
    frames = np.zeros((round(seconds * fps), 32, 32, 3), np.uint8)
    frames[len(frames) // 2:, 8:24, 8:24] = 255
    audio = np.zeros(round(seconds * sample_rate), np.float32)
    click = len(audio) // 2
    audio[click:click + 400] = 0.8 * np.sin(np.arange(400) * 0.5)
    return write_mp4(path, frames, fps, audio=audio, sample_rate=sample_rate)


@pytest.fixture(scope="module")
def vta_checkpoint(tiny_checkpoints) -> Path:
    """A tiny VTA-LDM checkpoint, trained two steps on the synthetic data (shared with the export tests)."""
    return tiny_checkpoints("vta_ldm")


@pytest.fixture(scope="module")
def vta_pipe(vta_checkpoint):
    from avgen.pipelines import pipeline_from_checkpoint

    return pipeline_from_checkpoint(vta_checkpoint, device="cpu")


# ------------------------------------------------------------------------------------------ settings
def test_app_options_from_the_config_block():
    assert AppOptions.from_config(None) == AppOptions("127.0.0.1", 7860, False, (), "auto", 30.0)
    assert AppOptions.from_config({"export_dir": "exports/joint"}).export_dir == ("exports/joint",)
    assert AppOptions.from_config({"export_dir": ["a", "b"], "port": 0}).export_dir == ("a", "b")
    with pytest.raises(ConfigError, match=r"^app\.prot: no such key \(known: host, port, share, export_dir"):
        AppOptions.from_config({"prot": 1})
    with pytest.raises(ConfigError, match=r"app\.port=70000: expected a port number 1-65535, or 0"):
        AppOptions.from_config({"port": 70000})
    with pytest.raises(ConfigError, match=r"app\.max_input_seconds=0"):
        AppOptions.from_config({"max_input_seconds": 0})


def test_load_pipelines_says_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"^app needs a model: ckpt_path=<checkpoint written by fit> or "
                                          r"app\.export_dir=<folder"):
        load_pipelines(None, ())
    with pytest.raises(ConfigError, match=r"^app\.device='gpu': not a device; expected auto, cpu or cuda"):
        load_pipelines(None, (str(tmp_path),), device="gpu")
    with pytest.raises(ConfigError, match=r"^app\.device='cuda:7': this machine has \d+ CUDA devices; use auto or cpu"):
        load_pipelines(None, (str(tmp_path),), device="cuda:7")
    with pytest.raises(ConfigError, match=rf"^app\.export_dir={tmp_path / 'gone'}: no such folder$"):
        load_pipelines(None, (str(tmp_path), str(tmp_path / "gone")))
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match=rf"^ckpt_path={tmp_path / 'other.ckpt'}: .* is not an avgen checkpoint"):
        load_pipelines(str(tmp_path / "other.ckpt"), ())


def test_two_models_of_one_system_get_a_tab_each(vta_checkpoint, tmp_path, monkeypatch):
    from avgen.export import export_pipeline

    monkeypatch.setenv("AVGEN_TINY_DIR", str(tmp_path / "tiny"))
    folder = export_pipeline(vta_checkpoint, tmp_path / "vta_export")
    pipes = load_pipelines(str(vta_checkpoint), (str(folder),), device="cpu", max_input_seconds=12.5)
    assert list(pipes) == ["vta_ldm (last.ckpt)", "vta_ldm (vta_export)"]
    assert [p.max_input_seconds for p in pipes.values()] == [12.5, 12.5]
    assert pipes["vta_ldm (vta_export)"].options == pipes["vta_ldm (last.ckpt)"].options


def test_tab_labels_stay_distinct_and_a_folder_is_served_once(tmp_path):
    from avgen.app import tab_labels

    models = [(Path("runs/a/last.ckpt"), "vta_ldm"), (Path("x1/vta"), "vta_ldm"), (Path("x2/vta"), "vta_ldm"),
              (Path("exports/joint"), "joint")]
    assert tab_labels(models) == ["vta_ldm (last.ckpt)", "vta_ldm (x1/vta)", "vta_ldm (x2/vta)", "joint"]
    (tmp_path / "vta").mkdir()
    with pytest.raises(ConfigError, match=r"^app\.export_dir: .*vta is given twice"):
        load_pipelines(None, (str(tmp_path / "vta"), str(tmp_path / "vta" / ".." / "vta")))


def test_command_line_errors_are_one_line(tmp_path):
    proc = run_cli("app", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("avgen app: error: app needs a model: ckpt_path=")
    assert "Traceback" not in proc.stderr
    proc = run_cli("app", "app.prot=1", cwd=tmp_path)
    assert proc.returncode == 1 and "unknown key app.prot; known keys of app: " in proc.stderr


def test_a_port_in_use_is_one_line(tmp_path):
    import socket

    import gradio as gr

    from avgen.app import launch

    with socket.socket() as taken, gr.Blocks() as demo:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^app\.port={port} \(app\.host=127\.0\.0\.1\): cannot serve there "
                                              r"\(Cannot find empty port.*\); pass app\.port=0 for a free port"):
            launch(demo, AppOptions(port=port), tmp_path)


def test_new_folder_never_reuses_a_folder(tmp_path):
    (tmp_path / "vta_ldm_0000").mkdir()
    assert new_folder(tmp_path, "vta_ldm") == tmp_path / "vta_ldm_0001"
    assert new_folder(tmp_path, "vta_ldm") == tmp_path / "vta_ldm_0002"
    assert new_folder(tmp_path / "new", "joint") == tmp_path / "new" / "joint_0000"


# ------------------------------------------------------------------------------------------ requests
def test_request_errors_are_shown_not_raised(vta_pipe, tmp_path):
    out = tmp_path / "out"
    tab = Tab("vta_ldm", vta_pipe, out)
    assert tab.run({"video": None, "prompt": "", "seed": 0}) == (
        None, None, "**Error:** no video given: vta_ldm needs a video file")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 100)
    video, plot, status = tab.run({"video": str(garbage), "seed": 0})
    assert (video, plot) == (None, None) and status.startswith("**Error:** video garbage.mp4: cannot be read")
    clip = sounding_clip(tmp_path / "clip.mp4")
    _, _, status = tab.run({"video": str(clip), "steps": 0, "seed": 0})
    assert status.startswith("**Error:** ") and "steps=0" in status
    vta_pipe.max_input_seconds = 0.5
    try:
        _, _, status = tab.run({"video": str(clip), "seed": 0})
    finally:
        vta_pipe.max_input_seconds = None
    assert status == ("**Error:** video clip.mp4 lasts 1.00 s; this pipeline accepts at most 0.5 s "
                      "(max_input_seconds): trim it")
    assert not out.exists()  # nothing written for a refused request


def test_a_failure_inside_the_model_is_shown_with_its_type(tmp_path, caplog):
    class OutOfMemory:
        system, inputs, required_inputs = "joint", ("prompt",), ("prompt",)

        def __call__(self, **kwargs):
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    status = Tab("joint", OutOfMemory(), tmp_path).run({"prompt": "a dog barks", "seed": 0})[2]
    assert status == ("**Failed:** RuntimeError: CUDA out of memory. Tried to allocate 2 GiB (traceback in the "
                      "server's log)")
    assert "Traceback" in caplog.text


def test_generate_writes_each_request_into_its_own_folder(vta_pipe, tmp_path):
    from avgen.metrics.av_align import VARIANTS

    clip = sounding_clip(tmp_path / "clip.mp4")
    original = clip.read_bytes()
    calls: list[tuple[int, int]] = []
    request = {"video": str(clip), "prompt": "", "negative_prompt": "", "steps": 2, "seed": 3}
    first = generate(vta_pipe, request, tmp_path / "out", label="vta_ldm", progress=lambda *a: calls.append(a))
    second = generate(vta_pipe, request, tmp_path / "out", label="vta_ldm")
    assert first.video == tmp_path / "out" / "vta_ldm_0000" / "sample_0000.mp4"
    assert second.video == tmp_path / "out" / "vta_ldm_0001" / "sample_0000.mp4"
    assert first.plot == first.video.with_name("sample_0000.av_align.png") and first.plot.stat().st_size > 0
    assert set(first.scores) == set(VARIANTS)
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)  # one unet pass per step: all guidance branches batched
    assert clip.read_bytes() == original
    written = read_clip(first.video)
    assert written.frames.shape[0] == 8 and len(written.audio) == pytest.approx(16000, abs=1024)
    assert np.array_equal(read_clip(second.video).audio, written.audio)  # same seed, same sound


def test_the_page_shows_each_models_inputs_and_defaults(vta_pipe, tmp_path):
    import gradio as gr

    demo = build_app({"vta_ldm": vta_pipe}, out_dir=tmp_path)
    widgets = {b.elem_id: b for b in demo.blocks.values() if (b.elem_id or "").startswith("avgen-vta_ldm-")}
    assert set(widgets) == {f"avgen-vta_ldm-{n}" for n in ("video", "prompt", "negative_prompt", "steps", "guidance",
                                                           "guidance_text", "sampler", "seed", "generate", "result",
                                                           "plot", "status")}
    assert isinstance(widgets["avgen-vta_ldm-video"], gr.Video)
    assert isinstance(widgets["avgen-vta_ldm-sampler"], gr.Dropdown)
    for name, default in vta_pipe.options.items():
        assert widgets[f"avgen-vta_ldm-{name}"].value == default, name
    assert widgets["avgen-vta_ldm-steps"].info == "sampler steps"
    # out-of-range numbers reach the pipeline, whose one-line reason shows in the status (not a Gradio toast)
    assert widgets["avgen-vta_ldm-steps"].preprocess(0) == 0 and widgets["avgen-vta_ldm-seed"].preprocess(-1) == -1
    assert Tab("vta_ldm", vta_pipe, tmp_path).run({"video": "x.mp4", "seed": -1})[2] == (
        "**Error:** seed=-1: expected a non-negative integer below 2**63")


@pytest.mark.parametrize("system", ["joint", "joint_video", "tempotokens"])
def test_the_other_systems_generate_from_their_tabs(system, tiny_checkpoints, tmp_path):
    """The joint model from a prompt (its clip length) or from a 1.5 s video (its audio, dubbed onto the upload),
    TempoTokens from a 0.75 s recording (a video as long)."""
    from avgen.media import write_wav
    from avgen.pipelines import pipeline_from_checkpoint

    pipe = pipeline_from_checkpoint(tiny_checkpoints(system.split("_")[0]), device="cpu")
    wav = write_wav(tmp_path / "recording.wav", 0.3 * np.sin(np.arange(12000, dtype=np.float32) * 0.05), 16000)
    upload = sounding_clip(tmp_path / "upload.mp4", seconds=1.5, fps=12)
    request, seconds = {
        "joint": ({"prompt": "a ball hits wood", "video": None, "negative_prompt": "", "steps": 2, "gamma": 1.5,
                   "eta": 1.0, "seed": 0}, 1.0),
        "joint_video": ({"prompt": "", "video": str(upload), "negative_prompt": "", "steps": 2, "seed": 0}, 1.5),
        "tempotokens": ({"audio": str(wav), "prompt": "", "steps": 2, "seed": 0}, 0.75)}[system]
    system = system.split("_")[0]
    demo = build_app({system: pipe}, out_dir=tmp_path / "out")
    ids = {b.elem_id for b in demo.blocks.values() if (b.elem_id or "").startswith(f"avgen-{system}-")}
    assert {f"avgen-{system}-{name}" for name in (*pipe.inputs, *pipe.options, "seed")} <= ids
    video, plot, status = Tab(system, pipe, tmp_path / "out").run(request)
    assert video == str(tmp_path / "out" / f"{system}_0000" / "sample_0000.mp4"), status
    assert status.startswith(f"Wrote `{video}` in ") and Path(plot).is_file()
    clip = read_clip(video)
    if request.get("video"):  # the upload's own frames (12 fps), its sound generated
        assert len(clip.frames) == len(read_clip(upload).frames)
        click = slice(len(clip.audio) // 2, len(clip.audio) // 2 + 400)  # the upload's sound is a click here
        assert not np.allclose(clip.audio[click], read_clip(upload).audio[click], atol=0.05)
        assert widget_labels(demo, system)["prompt"] == "Prompt (or give only a video)"
    else:
        assert len(clip.frames) == round(seconds * 8)
    assert clip.audio_seconds == pytest.approx(seconds, abs=0.07)
    if system == "joint":
        assert Tab(system, pipe, tmp_path / "out").run({"prompt": "", "video": None, "seed": 0})[2] == (
            "**Error:** no prompt or video given: joint needs a text prompt or a video file")


def widget_labels(demo, system: str) -> dict[str, str]:
    """``{input name: its label}`` of a tab's widgets."""
    prefix = f"avgen-{system}-"
    return {b.elem_id[len(prefix):]: getattr(b, "label", None) for b in demo.blocks.values()
            if (b.elem_id or "").startswith(prefix)}


# ------------------------------------------------------------------------------------------ in a browser
def chrome_or_skip():
    """A headless Chromium driven by selenium; a skip when Debian's chromium / chromium-driver are missing,
    a failure where ``AVGEN_REQUIRE_BROWSER=1`` (CI installs them)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        reason = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get("AVGEN_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (AVGEN_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1800",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def start_app(args: list[str], cwd: Path, timeout: float = 120) -> tuple[subprocess.Popen, str, list[str]]:
    """``python -m avgen app <args>`` in the background; returns the process, the URL it prints and the list its
    output lines keep arriving in."""
    proc = subprocess.Popen([sys.executable, "-m", "avgen", "app", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO), "GRADIO_TEMP_DIR": str(cwd / "gradio")})
    lines: list[str] = []
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"serving .* at (http://\S+)", line)
            if match:
                found.put(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    try:
        return proc, found.get(timeout=timeout), lines
    except queue.Empty:
        proc.kill()
        raise AssertionError("the app printed no URL:\n" + "".join(lines)) from None


@pytest.mark.slow
def test_the_page_in_a_browser(vta_checkpoint, tmp_path):
    """The user's path: the command serves the checkpoint; in Chromium, Generate without a video shows the
    error and the page stays usable; an uploaded clip gives a progress bar over the sampler's steps, then a
    sounding video of the clip's duration that plays sound, and its AV-Align plot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = sounding_clip(tmp_path / "clip.mp4")
    driver = chrome_or_skip()
    proc, url, lines = start_app([f"ckpt_path={vta_checkpoint}", "app.port=0", "app.device=cpu",
                                  f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        button = wait.until(lambda d: d.find_element(By.ID, "avgen-vta_ldm-generate"))
        button.click()

        def status(d) -> str:
            return d.find_element(By.ID, "avgen-vta_ldm-status").text

        wait.until(lambda d: "no video given" in status(d))
        driver.find_element(By.CSS_SELECTOR, "#avgen-vta_ldm-video input[type=file]").send_keys(str(clip))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#avgen-vta_ldm-video video"))
        steps = driver.find_element(By.CSS_SELECTOR, "#avgen-vta_ldm-steps input")
        steps.clear()
        steps.send_keys("40")  # long enough for the progress bar to be seen
        button.click()
        WebDriverWait(driver, 60, poll_frequency=0.05).until(lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('.progress-text')).some(e => /\\d+\\/40 steps/.test("
            "e.textContent))"))
        wait.until(lambda d: "AV-Align" in status(d))
        video = driver.find_element(By.CSS_SELECTOR, "#avgen-vta_ldm-result video")
        duration = wait.until(lambda d: d.execute_script("return arguments[0].readyState >= 1 ? "
                                                         "arguments[0].duration : null", video))
        assert duration == pytest.approx(1.0, abs=0.05)
        driver.execute_script("arguments[0].muted = true; arguments[0].play();", video)
        decoded = wait.until(lambda d: d.execute_script("return arguments[0].webkitAudioDecodedByteCount", video))
        assert decoded > 0
        plot = driver.find_element(By.CSS_SELECTOR, "#avgen-vta_ldm-plot img")
        assert driver.execute_script("return arguments[0].naturalWidth", plot) == 960
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(tmp_path / "app.png"))
    finally:
        driver.quit()
        proc.send_signal(signal.SIGINT)
        stopping = time.monotonic()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack into the output below (faulthandler)
            time.sleep(3)
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"exit {proc.returncode} {time.monotonic() - stopping:.0f} s after Ctrl-C:\n" + \
        "".join(lines)
    written = tmp_path / "run" / "app" / "vta_ldm_0000" / "sample_0000.mp4"
    assert written.is_file() and not (tmp_path / "run" / "app" / "vta_ldm_0001").exists()
    assert (tmp_path / "app.png").stat().st_size > 0
