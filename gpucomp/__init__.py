"""gpucomp: GPU-resident compositing of lip-sync predictions into full-body video.

The Python API (see the README's "Python API"):

    Engine         one model (and audio encoder) loaded once, many avatars
    Avatar         an avatar folder, validated; resident once an engine caches it
    FrameRequest   one frame for Engine.composite: avatar, frame, audio window
    audio_window   the model's (16, 512) audio input for output frame k
    RenderResult   what Engine.render did
    RenderInterrupted, GpucompError (and its kinds)   what can go wrong
    demo_assets    the built-in demo avatar, models and speech, built once and cached

Importing gpucomp never touches a GPU: whether one is usable is decided when
an Engine is created. The names are imported on first use, so `import gpucomp`
stays light.
"""

import os
from typing import TYPE_CHECKING

# FFmpeg inside OpenCV logs every decoding hiccup to stderr; errors are reported
# by gpucomp itself, once, naming the file and frame. Must precede `import cv2`.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "gpucomp.engine.api",
    "Avatar": "gpucomp.engine.api",
    "FrameRequest": "gpucomp.engine.api",
    "audio_window": "gpucomp.engine.api",
    "RenderResult": "gpucomp.engine.pipeline",
    "RenderInterrupted": "gpucomp.engine.render",
    "demo_assets": "gpucomp.cli.demo",
    "DemoAssets": "gpucomp.cli.demo",
    "GpucompError": "gpucomp.core.errors",
    "DatasetError": "gpucomp.core.errors",
    "ModelError": "gpucomp.core.errors",
    "BackendUnavailable": "gpucomp.core.errors",
    "OutputError": "gpucomp.core.errors",
    "ResourceError": "gpucomp.core.errors",
}
__all__ = ["Avatar", "BackendUnavailable", "DatasetError", "DemoAssets", "Engine", "FrameRequest", "GpucompError",
           "ModelError", "OutputError", "RenderInterrupted", "RenderResult", "ResourceError", "audio_window",
           "demo_assets"]
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from .cli.demo import DemoAssets, demo_assets
    from .core.errors import BackendUnavailable, DatasetError, GpucompError, ModelError, OutputError, ResourceError
    from .engine.api import Avatar, Engine, FrameRequest, audio_window
    from .engine.pipeline import RenderResult
    from .engine.render import RenderInterrupted


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gpucomp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
