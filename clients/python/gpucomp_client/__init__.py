"""gpucomp-client: the client side of `gpucomp serve` (docs/LIVE.md), for the
machines that talk to a gpucomp server: agent hosts, test rigs, benchmarks.
It needs no GPU stack: aiohttp and NumPy.

    from gpucomp_client import LiveClient

    async with LiveClient("http://gpu-host:8765", "anna", token=...) as client:
        await client.speak(pcm)      # s16le mono 16 kHz
        ...
"""

from .client import Frame, LiveClient
from .protocol import SAMPLE_RATE, unpack_frame

__all__ = ["Frame", "LiveClient", "SAMPLE_RATE", "unpack_frame"]
