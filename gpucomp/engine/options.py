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

from ..core.errors import GpucompError
from ..io.atomic import refuse_output_over_inputs
from ..io.encode import IMAGE_FORMATS, check_frame_size
from ..io.video_out import STDOUT
from .api import Avatar, check_feather
from .render import check_smooth

# Engine(...) arguments: the model and how it runs. Jobs sharing them share an engine.
# (feather is the render's own: one engine serves renders of any feather)
ENGINE_OPTIONS = ("batch", "workers", "cache_budget", "tf32", "cuda_graph", "cudnn_algo")


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


def plan_render(options, avatar: Avatar | None = None) -> RenderPlan:
    """Every check `render` makes before it loads a model (one-line errors);
    `avatar`: the options' avatar already opened (a batch opens each once)."""
    fmt = options.format or "png"
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
    if options.resume and fmt not in IMAGE_FORMATS:
        raise GpucompError(f"--resume works with png and jpg output; --format {fmt} is written whole")
    from_speech = options.speech is not None and options.features is None
    check_smooth(bool(options.smooth), from_speech=from_speech)
    if options.feather is not None:
        check_feather(avatar, options.feather)
    if from_speech and options.audio_encoder is None:
        raise GpucompError("--speech needs --audio-encoder ENCODER.onnx to compute its features "
                           "(or --features FILE computed earlier)")
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
