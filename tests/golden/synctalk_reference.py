"""Makes tests/golden/synctalk_reference.npz: SyncTalk_2D's own PyTorch models
run on the import case, the reference test_synctalk_checkpoint.py compares the
engine's ONNX models with.

Run once, outside the project's dependencies (PyTorch is not one of them):

    python -m tests.golden.synctalk_case /tmp/synctalk-case          # the project's venv
    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.13.0 numpy
    /tmp/torch/bin/python tests/golden/synctalk_reference.py \\
        --synctalk PATH/TO/SyncTalk_2D --case /tmp/synctalk-case --output tests/golden/synctalk_reference.npz

PATH/TO/SyncTalk_2D is a checkout of the public SyncTalk_2D repository (its
`unet_328.py` and `data_utils/ave/models/audioEnc.py` are imported from there;
no code of it is in this repository). The checkpoints are loaded with
`torch.load(weights_only=True)` and `load_state_dict(strict=True)`, so they are
checked to be files PyTorch reads, with SyncTalk_2D's exact keys and shapes.
Both models run in float64 (the reference) and in float32 (how far PyTorch's
own float32 is from it is recorded beside it). Kept of the UNet's output:
every GRID-th row and column of each frame, and each frame's channel means.

It also writes two small files torch.save itself made, in both layouts
(tests/golden/torch_written.pth and torch_written_legacy.pth), with the
values they hold, for the checkpoint reader: dtypes, a transposed view, two
tensors sharing one storage, a parameter, an empty tensor.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

GRID = 8  # as tests/golden/synctalk_case.py


def digest(arrays) -> str:
    """As tests/golden/synctalk_case.digest."""
    h = hashlib.sha256()
    for name, value in arrays.items():
        h.update(f"{name}|{value.shape}|{value.dtype}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def state_digest(state) -> str:
    return digest({name: tensor.numpy() for name, tensor in state.items()})


def torch_written(folder: Path) -> dict[str, np.ndarray]:
    """The reader's fixtures, written by torch.save; returns what they hold."""
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(3, 4, generator=generator)
    state = {
        "float32": torch.randn(2, 3, 5, generator=generator),
        "transposed": base.t(),                      # strides (1, 4), a view of `base`'s storage
        "row": base[1],                              # the same storage at an offset
        "float16": torch.randn(6, generator=generator).half(),
        "bfloat16": torch.randn(6, generator=generator).bfloat16(),
        "float64": torch.randn(2, 2, generator=generator).double(),
        "int64": torch.arange(5),
        "scalar": torch.tensor(7),
        "parameter": torch.nn.Parameter(torch.ones(2, 2)),
        "empty": torch.zeros(0, 3),
    }
    torch.save(state, folder / "torch_written.pth")
    torch.save(state, folder / "torch_written_legacy.pth", _use_new_zipfile_serialization=False)
    return {name: (t.detach().float() if t.dtype == torch.bfloat16 else t.detach()).numpy()
            for name, t in state.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synctalk", type=Path, required=True, help="a SyncTalk_2D checkout")
    parser.add_argument("--case", type=Path, required=True, help="the folder tests.golden.synctalk_case wrote")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    sys.path[:0] = [str(args.synctalk), str(args.synctalk / "data_utils" / "ave")]
    from models import AudioEncoder  # data_utils/ave/models/audioEnc.py
    from unet_328 import Model

    unet_state = torch.load(args.case / "unet328.pth", weights_only=True)
    encoder_state = torch.load(args.case / "ave.pth", weights_only=True)
    data = dict(np.load(args.case / "inputs.npz"))

    unet = Model(6, mode="ave").eval()
    unet.load_state_dict(unet_state, strict=True)
    encoder = AudioEncoder().eval()
    encoder.load_state_dict({f"audio_encoder.{k}": v for k, v in encoder_state.items()}, strict=True)

    with torch.no_grad():
        visual, audio, mel = (torch.from_numpy(data[k]) for k in ("visual", "audio", "mel"))
        out32 = unet(visual, audio).numpy()
        features32 = encoder(mel).numpy()
        out64 = unet.double()(visual.double(), audio.double()).numpy()
        features64 = encoder.double()(mel.double()).numpy()

    written = torch_written(args.output.parent)
    sources = {name: hashlib.sha256((args.synctalk / name).read_bytes()).hexdigest()
               for name in ("unet_328.py", "data_utils/ave/models/audioEnc.py")}
    np.savez_compressed(
        args.output,
        unet_grid=out64[:, :, ::GRID, ::GRID].astype(np.float32),
        unet_channel_means=out64.mean(axis=(2, 3)),
        features=features64.astype(np.float32),
        torch_float32_unet_max_diff=np.float64(np.abs(out32 - out64).max()),
        torch_float32_features_max_diff=np.float64(np.abs(features32 - features64).max()),
        unet328_digest=state_digest(unet_state),
        ave_digest=state_digest(encoder_state),
        inputs_digest=digest(data),
        torch_version=torch.__version__,
        synctalk_sources=repr(sources),
        **{f"written_{name}": value for name, value in written.items()},
    )
    print(f"wrote {args.output}: UNet output std {out64.std():.3f}, PyTorch float32 against float64: "
          f"UNet {np.abs(out32 - out64).max():.2e}, encoder {np.abs(features32 - features64).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
