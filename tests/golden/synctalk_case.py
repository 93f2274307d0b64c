"""The SyncTalk_2D import case the golden file was made for: seeded
checkpoints with SyncTalk_2D's exact state-dict keys and shapes, and the inputs
both models are run on. Deterministic; tests/test_synctalk_checkpoint.py builds it
again and checks its digest against the golden file's before comparing.

    python -m tests.golden.synctalk_case DIR     # writes DIR/unet328.pth, DIR/ave.pth, DIR/inputs.npz

The UNet's BatchNorm shifts are drawn around 2 (gpucomp.model.unet328.SeededWeights):
with fully random shifts the network is chaotic and float32 rounding alone
(PyTorch's own, float32 against float64) reaches ~4e-4 at the output, which
would hide a 1e-4 comparison; with these it stays near 3e-5.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from gpucomp.model.audio_encoder import MEL_WINDOW, calibration_window, seeded_audio_encoder
from gpucomp.model.synctalk import ENCODER_PREFIX
from gpucomp.model.unet328 import calibration_sample, seeded_unet328

from ..torch_checkpoint import write_pth

UNET_SEED, ENCODER_SEED, INPUT_SEED, SHIFT = 11, 12, 13, 2.0
# Output pixels kept in the golden file: every 8th row and column of each frame.
GRID = 8


def unet_state_dict() -> dict[str, np.ndarray]:
    return seeded_unet328(1.0, UNET_SEED, shift=SHIFT)[1]


def encoder_state_dict() -> dict[str, np.ndarray]:
    """As SyncTalk_2D ships its encoder: keys without the `audio_encoder.` prefix."""
    return {name[len(ENCODER_PREFIX):]: value for name, value in seeded_audio_encoder(ENCODER_SEED)[1].items()}


def inputs() -> dict[str, np.ndarray]:
    """Two face-like model inputs with their audio windows, and four mel windows."""
    rng = np.random.default_rng(INPUT_SEED)
    samples = [calibration_sample(rng) for _ in range(2)]
    mel = calibration_window(rng)[0].reshape(80, -1, MEL_WINDOW).transpose(1, 0, 2)[:4, None]
    return {"visual": np.stack([v for v, _ in samples]), "audio": np.stack([a for _, a in samples]),
            "mel": np.ascontiguousarray(mel)}


def digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, shapes, dtypes and bytes, in order."""
    h = hashlib.sha256()
    for name, value in arrays.items():
        h.update(f"{name}|{value.shape}|{value.dtype}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def write_case(folder: Path) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet, encoder, data = unet_state_dict(), encoder_state_dict(), inputs()
    write_pth(folder / "unet328.pth", unet)
    write_pth(folder / "ave.pth", encoder)
    np.savez(folder / "inputs.npz", **data)
    return {"unet328": digest(unet), "ave": digest(encoder), "inputs": digest(data)}


if __name__ == "__main__":
    print(write_case(Path(sys.argv[1])))
