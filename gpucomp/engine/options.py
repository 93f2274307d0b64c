"""The `render` command's options as the Python API's arguments.

`plan_render(options)` checks a render described by render's options (an
argparse namespace: the command line, or a job of a `batch` file) the way
`render` checks it, before any model is loaded, and returns the avatar, the
Engine's arguments and Engine.render's arguments. The command and the batch
runner are both thin users of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import GpucompError, ResourceError
from ..core.resources import format_bytes
from ..io.atomic import refuse_output_over_inputs
from ..io.encode import check_frame_size
from ..io.video_out import STDOUT
from .api import Avatar, check_feather
from .framecache import ring_minimum
from .render import check_output, check_smooth

# Engine(...) arguments: the model and how it runs. Jobs sharing them share an engine.
# (feather is the render's own: one engine serves renders of any feather)
ENGINE_OPTIONS = ("batch", "workers", "cache_budget", "tf32", "cuda_graph", "cudnn_algo", "precision", "prefer_nhwc")


@dataclass(frozen=True)
class RenderPlan:
    avatar: Avatar
    model: Path
    audio_encoder: Path | None   # loaded by the engine: the render computes features from speech
    engine: dict                 # Engine(model, backend=..., **engine)
    render: dict                 # engine.render(avatar, output, **render)
    output: str

    @property
    def engine_key(self) -> tuple:
        """Renders with equal keys can share one Engine (the audio encoder is
        swapped in as a render needs it: Engine.use_audio_encoder)."""
        return (str(Path(self.model).resolve()), tuple(sorted(self.engine.items())))


def avatar_key(options) -> tuple:
    """What decides an avatar's cache: its folder, frame range and clipping."""
    return (str(Path(options.data).resolve()), options.start, options.frames, options.clip_rects)


def _feature_rows(path: Path) -> int | None:
    """The rows of a features .npy from its header alone, or None when it
    cannot be read that way (the render's own check of the file says why)."""
    import numpy as np

    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except Exception:  # NumPy raises several types for a file that is not an .npy
        return None


def check_cache_budget(budget: int, avatar: Avatar, batch: int, rows: int | None):
    """A ResourceError before anything is loaded when `budget` cannot hold the
    frames a render of `rows` output frames (None: not known yet, at least
    one) over `avatar` needs at the least: every avatar frame it shows, or a
    decode-ahead ring (framecache.ring_slots) when that is fewer. The frames
    in flight, which depend on the backend, are counted when it starts."""
    rows = rows or 1
    frames = min(rows, len(avatar), ring_minimum(min(batch, rows)))
    frame_bytes = avatar.dataset.frame_bytes()
    if budget < frames * frame_bytes:
        raise ResourceError(f"--cache-budget {format_bytes(budget)} cannot hold the {frames} frames of "
                            f"{avatar.width}x{avatar.height} that a render of {avatar.path} needs at the least "
                            f"({format_bytes(frames * frame_bytes)}); raise --cache-budget or lower --batch")


def plan_render(options, avatar: Avatar | None = None) -> RenderPlan:
    """Every check `render` makes before it loads a model (one-line errors);
    `avatar`: the options' avatar already opened (a batch opens each once)."""
    fmt = options.format or "png"
    check_output(str(options.output), fmt, bool(options.resume))
    if options.audio_encoder is not None and options.speech is None:
        raise GpucompError("--audio-encoder computes features from --speech; give --speech too")
    speech = options.speech is not None or options.features is not None
    if avatar is None:
        avatar = Avatar.open(options.data, start=options.start, frames=options.frames, clip_rects=options.clip_rects,
                             features=False if speech else None)
    if not speech and avatar.features is None:
        raise GpucompError(f"{options.data}: has no features of its own (aud_ave.npy; an avatar made by prepare has "
                           f"none): give --speech SPEECH --audio-encoder ENCODER.onnx, or --features FEATURES.npy")
    dataset = avatar.dataset
    if str(options.output) != STDOUT:
        refuse_output_over_inputs(Path(options.output), dataset.root,
                                  [dataset.full.path, dataset.crops.path, dataset.rects_path, dataset.features_path,
                                   dataset.audio_path, options.model, options.audio, options.speech,
                                   options.audio_encoder, options.features])
    check_frame_size(fmt, dataset.width, dataset.height)
    from_speech = options.speech is not None and options.features is None
    check_smooth(bool(options.smooth), from_speech=from_speech)
    if options.feather is not None:
        check_feather(avatar, options.feather)
    if from_speech and options.audio_encoder is None:
        raise GpucompError("--speech needs --audio-encoder ENCODER.onnx to compute its features "
                           "(or --features FILE computed earlier)")
    if options.cache_budget is not None:
        rows = None if speech else len(avatar)  # speech: its length is known once its features are
        if options.features is not None:
            rows = _feature_rows(Path(options.features))
        check_cache_budget(options.cache_budget, avatar, options.batch, rows)
    engine = {name: getattr(options, name) for name in ENGINE_OPTIONS}
    render = dict(
        speech=options.speech if from_speech else None, features=options.features, format=fmt,
        schedule=options.schedule, smooth=bool(options.smooth), feather=options.feather,
        # --speech beside --features is the voice track
        audio=options.audio or (options.speech if options.features is not None else None),
        audio_rate=options.audio_rate, voice_track=not options.no_audio, crf=options.crf, preset=options.preset,
        encoder=options.encoder, resume=options.resume)
    return RenderPlan(avatar, Path(options.model), options.audio_encoder if from_speech else None, engine, render,
                      str(options.output))
