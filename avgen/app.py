"""``python -m avgen app``: a local web page (Gradio) that runs trained systems.

``python -m avgen app ckpt_path=<ckpt>`` (a ``fit`` checkpoint) or ``app.export_dir=<folder>`` (a folder
written by ``export``; a list serves several) loads each model once as an :mod:`avgen.pipelines` pipeline
and serves one tab per model, with the model's natural inputs (:attr:`~avgen.pipelines.AVPipeline.inputs`):

- joint (text → sounding video): prompt and negative prompt; or a video upload, for which it generates the audio
  (the replacement method; the prompt is then optional);
- TempoTokens (audio → video): an audio upload or a microphone recording, and a prompt;
- VTA-LDM (video → audio): a video upload and an optional prompt;

its sampling settings (:attr:`~avgen.pipelines.AVPipeline.options`: steps, guidance scales, γ for the
joint model) and the seed. Generation shows a progress bar fed by the pipeline's ``progress(done, total)``
callback; the result is the sounding mp4 that :meth:`~avgen.pipelines.AVOutput.save` writes, played in the
page, next to its AV-Align plot (:func:`avgen.metrics.av_align.plot_alignment`, scored with the run's
``evaluate.av_align`` settings, as ``evaluate`` would). Every request writes into a new numbered folder
under ``<run folder>/app/`` (:func:`new_folder`), so no file is ever replaced.

A request the pipeline refuses (:class:`~avgen.errors.InputError`: an unreadable file, an input longer than
the model takes, a bad setting) and any failure while generating appear in the tab's status line; the page
stays usable. The functional core, :func:`generate`, runs one request without Gradio; :class:`Tab` turns
its errors into that status line.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avgen.errors import CommandUnavailable, ConfigError, InputError
from avgen.media import MediaError

if TYPE_CHECKING:
    import gradio as gr

    from avgen.metrics.av_align import AVAlignConfig
    from avgen.pipelines import AVPipeline

log = logging.getLogger("avgen")

# Errors a request can cause: their message is the whole story. Anything else is a fault of avgen or of
# the machine (out of memory): the page names it and the server's log holds the traceback.
REQUEST_ERRORS = (InputError, ConfigError, MediaError, FileNotFoundError)

# What a tab asks for when its model's required inputs (``required_inputs``: it needs one of them) are empty.
REQUIRED_INPUTS = {"prompt": "a text prompt", "audio": "an audio file (upload one or record with the microphone)",
                   "video": "a video file"}


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class AppOptions:
    """The ``app`` block of ``configs/config.yaml``.

    Attributes:
        host: the address the server listens on (``127.0.0.1``: this machine only; ``0.0.0.0``: the network).
        port: its port; 0 picks a free one.
        share: also ask Gradio for a public ``*.gradio.live`` link (needs the internet).
        export_dir: folders written by ``export`` to serve (with or besides ``ckpt_path``).
        device: where the models run: ``auto`` (cuda when available), ``cpu``, ``cuda:1``.
        max_input_seconds: the longest audio or video upload a model takes (longer ones are refused on the page:
            generation time grows with the input's length).

    Raises:
        ConfigError: an unknown key or a bad value, naming ``app.<key>``.
    """

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    export_dir: tuple[str, ...] = ()
    device: str = "auto"
    max_input_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"app.host={self.host!r}: expected an address, e.g. 127.0.0.1 or 0.0.0.0")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"app.port={self.port!r}: expected a port number 1-65535, or 0 for a free one")
        if not isinstance(self.share, bool):
            raise ConfigError(f"app.share={self.share!r}: expected true or false")
        if not all(isinstance(d, str) and d for d in self.export_dir):
            raise ConfigError(f"app.export_dir={list(self.export_dir)!r}: expected a folder or a list of folders")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"app.device={self.device!r}: expected auto, cpu or a torch device such as cuda:0")
        if (isinstance(self.max_input_seconds, bool) or not isinstance(self.max_input_seconds, (int, float))
                or not self.max_input_seconds > 0):
            raise ConfigError(f"app.max_input_seconds={self.max_input_seconds!r}: expected a number of seconds > 0")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> AppOptions:
        """From the ``app`` block (missing keys: the defaults above); ``export_dir`` may be one folder,
        a list of them or null.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"app.{unknown[0]}: no such key (known: "
                              f"{', '.join(f.name for f in dataclasses.fields(cls))})")
        folders = cfg.get("export_dir")
        cfg["export_dir"] = () if folders is None else (folders,) if isinstance(folders, str) else tuple(folders)
        return cls(**cfg)


# ------------------------------------------------------------------------------------------ loading
def model_sources(ckpt_path: str | None, export_dirs: Sequence[str]) -> list[tuple[str, Path]]:
    """``[(config key, path)]`` of the models to serve: the checkpoint, then each export folder; paths only
    (nothing is read or imported, so ``app`` refuses a bad command line at once).

    Raises:
        ConfigError: neither a checkpoint nor an export folder, a path that is not there, a folder given twice.
    """
    if not ckpt_path and not export_dirs:
        raise ConfigError("app needs a model: ckpt_path=<checkpoint written by fit> or app.export_dir=<folder "
                          "written by export> (a list of folders serves several)")
    sources = ([("ckpt_path", Path(ckpt_path))] if ckpt_path else []) + [("app.export_dir", Path(d))
                                                                           for d in export_dirs]
    seen: dict[Path, Path] = {}
    for key, path in sources:
        if not (path.is_file() if key == "ckpt_path" else path.is_dir()):
            raise ConfigError(f"{key}={path}: no such {'file' if key == 'ckpt_path' else 'folder'}")
        if path.resolve() in seen:
            raise ConfigError(f"app.export_dir: {path} is given twice (as {seen[path.resolve()]} before); list each "
                              f"model once")
        seen[path.resolve()] = path
    return sources


def load_pipelines(ckpt_path: str | None, export_dirs: Sequence[str], device: str = "auto",
                   max_input_seconds: float | None = None) -> dict[str, AVPipeline]:
    """The pipelines to serve, by tab label: the checkpoint's, then each export folder's, each taking inputs
    of at most ``max_input_seconds``. Labels are the system names (``joint``, ``tempotokens``, ``vta_ldm``),
    with the file or folder name added when two models are of the same system. Every path is checked before
    any model loads.

    Raises:
        ConfigError: a device this machine does not have (``app.device``), neither a checkpoint nor an export
            folder, a path that is not there, or a file that is not an avgen checkpoint / export (naming
            ``ckpt_path`` or ``app.export_dir``).
    """
    from avgen.pipelines import from_pretrained, pipeline_from_checkpoint, resolve_device

    resolve_device(device, "app.device")
    sources = model_sources(ckpt_path, export_dirs)
    loaded = []
    for key, path in sources:
        load = pipeline_from_checkpoint if key == "ckpt_path" else from_pretrained
        log.info("loading %s", path)
        try:
            pipe = load(path, device=device)
        except ValueError as exc:  # not an avgen checkpoint, an incomplete export folder
            raise ConfigError(f"{key}={path}: {exc}") from exc
        pipe.max_input_seconds = max_input_seconds
        loaded.append((path, pipe))
    return dict(zip(tab_labels([(path, pipe.system) for path, pipe in loaded]), (pipe for _, pipe in loaded)))


def tab_labels(models: Sequence[tuple[Path, str]]) -> list[str]:
    """One distinct tab label per ``(path, system)``: the system name; with the file or folder name added when
    two models are of the same system; with the path as given when those names are the same too
    (``a/model`` and ``b/model``)."""
    systems = [system for _, system in models]
    labels = [system if systems.count(system) == 1 else f"{system} ({path.name})" for path, system in models]
    return [label if labels.count(label) == 1 else f"{system} ({path})"
            for label, (path, system) in zip(labels, models)]


# ------------------------------------------------------------------------------------------ one request
@dataclass(frozen=True)
class Result:
    """What one request produced: the sounding mp4, its AV-Align plot and scores, the seconds it took."""

    video: Path
    plot: Path
    scores: dict[str, float]
    seconds: float

    def summary(self) -> str:
        """The status line of a finished request."""
        scores = ", ".join(f"{variant} {score:.3f}" for variant, score in self.scores.items())
        return f"Wrote `{self.video}` in {self.seconds:.1f} s. AV-Align: {scores}."


def new_folder(root: Path, stem: str) -> Path:
    """A folder ``<root>/<stem>_NNNN`` that did not exist (made here, so two requests never share one)."""
    root.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        folder = root / f"{stem}_{n:04d}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")


def generate(pipe: AVPipeline, request: Mapping[str, Any], out_root: Path, *, label: str = "clip",
             progress: Callable[[int, int], None] | None = None, av_align: AVAlignConfig | None = None) -> Result:
    """Run ``pipe`` on one request of the page and write its outputs into a new folder under ``out_root``.

    ``request`` holds the pipeline's inputs (``prompt``, ``audio`` / ``video`` as file paths), its options
    (an empty text reads as the option's default) and ``seed``. Returns the written mp4 and its AV-Align plot.

    Raises:
        InputError: every one of the model's required inputs (``pipe.required_inputs``) is empty, or the pipeline
            refused the
            request (before any model ran).
        MediaError: the result could not be read back for AV-Align.
    """
    from avgen.media import read_clip
    from avgen.metrics.av_align import DEFAULT_CONFIG, align_clip, plot_alignment

    needed = pipe.required_inputs
    if not any(request.get(name) for name in needed):
        raise InputError(f"no {' or '.join(needed)} given: {label} needs "
                         f"{' or '.join(REQUIRED_INPUTS[name] for name in needed)}")
    kwargs = {name: value for name, value in request.items() if value not in (None, "")}
    start = time.monotonic()
    out = pipe(progress=progress, **kwargs)
    folder = new_folder(out_root, label)
    video = out.save(folder)[0]
    clip = read_clip(video)
    alignment = align_clip(clip.frames, float(clip.fps), clip.audio, clip.sample_rate, av_align or DEFAULT_CONFIG)
    plot = plot_alignment(folder / f"{video.stem}.av_align.png", clip.frames, clip.fps, clip.audio,
                          clip.sample_rate, alignment, overwrite=False)
    return Result(video=video, plot=plot, scores=dict(alignment.scores), seconds=time.monotonic() - start)


# ------------------------------------------------------------------------------------------ the page
# Settings that the page shows as a slider over this range; other numbers get a number box.
SLIDERS = {"gamma": (0.1, 4.0, 0.05), "eta": (0.0, 1.0, 0.05)}
GUIDANCE_MAX = 15.0
VIDEO_HEIGHT = 320  # pixels; the players scale a clip up or down to it


def option_component(name: str, default: Any, doc: str | None, elem_id: str) -> gr.components.Component:
    """The widget of one sampling option: a choice list for ``sampler``, a slider for γ, η and the guidance
    scales, a whole-number box for ints (steps), a text box for text options (empty: the default)."""
    import gradio as gr

    label = name.replace("_", " ").capitalize()
    if name == "sampler":
        from avgen.systems.vta_ldm import SAMPLERS

        return gr.Dropdown(choices=list(SAMPLERS), value=default, label=label, info=doc, elem_id=elem_id)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=label, info=doc, elem_id=elem_id)
    if isinstance(default, int):  # no minimum: Gradio would refuse 0 in a toast, the pipeline says why in the status
        return gr.Number(value=default, precision=0, label=label, info=doc, elem_id=elem_id)
    if isinstance(default, float):
        low, high, step = SLIDERS.get(name, (0.0, max(GUIDANCE_MAX, 2 * default), 0.1))
        return gr.Slider(low, high, value=default, step=step, label=label, info=doc, elem_id=elem_id)
    return gr.Textbox(value=default or "", label=label, info=doc, placeholder="(empty: the model's default)",
                      elem_id=elem_id)


def input_component(name: str, pipe: AVPipeline, elem_id: str) -> gr.components.Component:
    """The widget of one natural input of ``pipe``; media inputs hand the handler a file path."""
    import gradio as gr

    longest = f" (at most {pipe.max_input_seconds:g} s)" if pipe.max_input_seconds else ""
    if name == "audio":
        return gr.Audio(sources=["upload", "microphone"], type="filepath", label=f"Audio{longest}", elem_id=elem_id)
    alternatives = [other for other in pipe.required_inputs if other != name]
    if name == "video":
        role = (" (optional: the model then generates only its audio)" if name not in pipe.required_inputs
                or alternatives else "")
        return gr.Video(sources=["upload"], label=f"Video{role}{longest}", height=VIDEO_HEIGHT, elem_id=elem_id)
    if name == "prompt":
        role = ("" if name in pipe.required_inputs and not alternatives
                else f" (or give only a {alternatives[0]})" if name in pipe.required_inputs else " (optional)")
        return gr.Textbox(label=f"Prompt{role}", lines=2, elem_id=elem_id)
    raise ValueError(f"{pipe.system} takes an input {name!r} the page has no widget for")


def option_docs(pipe: AVPipeline) -> dict[str, str]:
    """``{option: its doc}``, from the fields of the model's sampling settings (``avgen.systems.settings``)."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(pipe.model.sampling)}


class Tab:
    """One model's tab: its widgets by request key and the handler of its Generate button.

    The handler (:meth:`run`) returns ``(video, plot, status)``: the mp4 and plot paths and a Markdown
    status line. A request error or a failure becomes the status line, with no result; it is never raised,
    so the page stays as it was.
    """

    def __init__(self, label: str, pipe: AVPipeline, out_root: Path, av_align: AVAlignConfig | None = None):
        self.label, self.pipe, self.out_root, self.av_align = label, pipe, out_root, av_align
        self.components: dict[str, gr.components.Component] = {}

    def render(self) -> None:
        """Lay out the tab's widgets (inside ``gr.Blocks`` and ``gr.Tab``) and wire its button."""
        import gradio as gr

        pipe = self.pipe
        docs = option_docs(pipe)
        key = re.sub(r"\W+", "_", self.label).strip("_")  # element ids: avgen-<tab>-<widget>, for scripts and tests
        gr.Markdown(f"**{pipe.task}** · {pipe.system} · clips of {pipe.clip_seconds:g} s at "
                    f"{float(pipe.fps):g} fps, {pipe.sample_rate} Hz")
        with gr.Row():
            with gr.Column():
                for name in pipe.inputs:
                    self.components[name] = input_component(name, pipe, f"avgen-{key}-{name}")
                if "negative_prompt" in pipe.options:
                    self.components["negative_prompt"] = option_component(
                        "negative_prompt", pipe.options["negative_prompt"], docs.get("negative_prompt"),
                        f"avgen-{key}-negative_prompt")
                with gr.Accordion("Sampling settings", open=True):
                    for name, default in pipe.options.items():
                        if name != "negative_prompt":
                            self.components[name] = option_component(name, default, docs.get(name),
                                                                      f"avgen-{key}-{name}")
                    self.components["seed"] = gr.Number(value=0, precision=0, label="Seed",
                                                        info="the clip's noise; the same seed gives the same clip",
                                                        elem_id=f"avgen-{key}-seed")
                button = gr.Button("Generate", variant="primary", elem_id=f"avgen-{key}-generate")
            with gr.Column():
                video = gr.Video(label="Result", interactive=False, height=VIDEO_HEIGHT, elem_id=f"avgen-{key}-result")
                # the plot's title names AV-Align and its scores
                plot = gr.Image(label="AV-Align", show_label=False, type="filepath", interactive=False,
                                elem_id=f"avgen-{key}-plot")
                status = gr.Markdown(elem_id=f"avgen-{key}-status")
        names = {component: name for name, component in self.components.items()}
        # one generation at a time over every tab: the models share the device
        button.click(lambda values, progress=gr.Progress(): self.run(
                         {names[c]: v for c, v in values.items()}, progress),
                     inputs=set(self.components.values()), outputs=[video, plot, status],
                     concurrency_id="generate", concurrency_limit=1)

    def run(self, request: Mapping[str, Any], progress: Callable | None = None) -> tuple[str | None, str | None, str]:
        """Generate for one request of the page: ``(mp4 path, plot path, status)``; on an error
        ``(None, None, the message)``."""
        def step(done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), desc="sampling", unit="steps")

        try:
            result = generate(self.pipe, request, self.out_root, label=self.pipe.system, progress=step,
                              av_align=self.av_align)
        except REQUEST_ERRORS as exc:
            return None, None, f"**Error:** {exc}"
        except Exception as exc:  # the page stays usable; the traceback goes to the server's log
            log.exception("app: %s failed", self.label)
            return None, None, (f"**Failed:** {type(exc).__name__}: {' '.join(str(exc).split())} (traceback in "
                                f"the server's log)")
        return str(result.video), str(result.plot), result.summary()


def build_app(pipelines: Mapping[str, AVPipeline], *, out_dir: str | Path | None = None,
              av_align: AVAlignConfig | None = None) -> gr.Blocks:
    """The page: one tab per pipeline (keyed by label, :func:`load_pipelines`). Outputs go under
    ``out_dir`` (default: a new temporary folder, which Gradio serves); AV-Align is scored with ``av_align``
    (default: the official script's settings)."""
    import gradio as gr

    out_root = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="avgen_app_"))
    with gr.Blocks(title="avgen", analytics_enabled=False) as demo:
        gr.Markdown("# avgen\nGenerate with a trained model: pick its tab, give the inputs, press Generate.")
        with gr.Tabs():
            for label, pipe in pipelines.items():
                with gr.Tab(label):
                    Tab(label, pipe, out_root, av_align).render()
    return demo


# ------------------------------------------------------------------------------------------ serving
def free_port(host: str) -> int:
    """A port nobody listens on at ``host`` now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(demo: gr.Blocks, options: AppOptions, out_dir: str | Path) -> str:
    """Start serving ``demo`` (whose outputs go under ``out_dir``) in a background thread and return its
    local URL. Gradio's fonts are the system's (no font download) and its server-side rendering is off
    (it needs Node).

    Raises:
        ConfigError: the port is in use or the host is not an address of this machine (naming ``app.port``).
    """
    import gradio as gr

    # Gradio checks its own server with httpx at start; Hydra's logging would print each request
    logging.getLogger("httpx").setLevel(logging.WARNING)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    port = options.port
    try:
        port = port or free_port(options.host)
        _, local_url, share_url = demo.launch(server_name=options.host, server_port=port, share=options.share,
                                              prevent_thread_lock=True, quiet=True, theme=theme, ssr_mode=False,
                                              allowed_paths=[str(out_dir)])
    except OSError as exc:  # the port is taken (another app, a second avgen app) or the address is not this machine's
        reason = str(exc).split(". ")[0]
        raise ConfigError(f"app.port={port} (app.host={options.host}): cannot serve there ({reason}); pass "
                          f"app.port=0 for a free port, or another app.port / app.host") from exc
    if share_url:
        print(f"avgen app: public link {share_url}")
    return local_url


def serve(cfg) -> None:
    """``python -m avgen app``: load the models of ``ckpt_path`` / ``app.export_dir``, print the page's URL
    and serve it until Ctrl-C. Outputs go to ``<run folder>/app/``.

    Raises:
        ConfigError: no model given, a path that is not there, a bad ``app.*`` value.
        CommandUnavailable: gradio is not installed.
    """
    from omegaconf import OmegaConf

    # the command line first: a bad one is refused before the seconds of importing gradio and torch
    options = AppOptions.from_config(OmegaConf.to_container(cfg.get("app"), resolve=True))
    model_sources(cfg.get("ckpt_path"), options.export_dir)
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise CommandUnavailable("app needs gradio: pip install -c constraints.txt -e '.[app]' (make setup "
                                 "installs it)") from exc

    from avgen.metrics.av_align import AVAlignConfig

    pipelines = load_pipelines(cfg.get("ckpt_path"), options.export_dir, options.device, options.max_input_seconds)
    evaluate = OmegaConf.to_container(cfg.evaluate, resolve=True) if cfg.get("evaluate") else {}
    out_dir = Path(cfg.paths.output_dir) / "app"
    demo = build_app(pipelines, out_dir=out_dir, av_align=AVAlignConfig(**(evaluate.get("av_align") or {})))
    url = launch(demo, options, out_dir)
    print(f"avgen app: serving {', '.join(pipelines)} at {url} (outputs in {out_dir}; Ctrl-C stops)", flush=True)
    serve_until_interrupted(demo)


def serve_until_interrupted(demo: gr.Blocks) -> None:
    """Block until Ctrl-C (SIGINT) or the app stops, then close it as ``gr.Blocks.close`` does: the queue and its
    heartbeat loops first, then the server (whose thread Gradio joins for at most 5 s).

    Gradio's ``block_thread`` closes only the server on Ctrl-C and leaves the queue's loops running; the command
    then hung at exit now and then (a test saw no exit 120 s after Ctrl-C). ``SIGUSR1`` dumps every thread's stack
    to stderr (:mod:`faulthandler`), so a process that does not stop can be asked where it is."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Ctrl-C raises KeyboardInterrupt here whatever the process inherited or a library installed: a stuck app's stacks
    # (SIGUSR1) showed this loop still sleeping 60 s after SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while demo.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("avgen app: Ctrl-C: closing the server", flush=True)
    finally:
        demo.close(verbose=False)
