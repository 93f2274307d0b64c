"""The UNet-328 model: an ONNX builder and an inference session wrapper."""

from .session import ModelIO, ModelSession, discover_io
from .unet328 import build_echo_model, build_unet328, channels_for, parameter_count

__all__ = ["ModelIO", "ModelSession", "discover_io", "build_echo_model", "build_unet328", "channels_for", "parameter_count"]
