"""Which avatar frame and which audio window each output frame uses.

Output frame k (files and video frames are numbered by k) composites dataset
frame `avatar(k)` with the audio window centred on feature row k:

    straight  a dataset render: k runs over the dataset frames rendered, and
              output, avatar frame and feature row are all the same index
    pingpong  a speech render (AUDIO.md): k = 0 .. M-1, one per feature row,
              the avatar range played forward, then backward, turning frames
              not repeated: p = k mod (2n - 2), avatar = start + (p if p < n else 2n - 2 - p)
    loop      a speech render with the avatar range played forward, again and again

Positions 0 .. len-1 are what the backends and the frame cache count in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("pingpong", "loop")


@dataclass(frozen=True)
class Schedule:
    outputs: range   # output frame numbers, which are also the feature rows the windows centre on
    avatar: range    # the dataset frames in use (a speech render uses only those it reaches)
    kind: str = "straight"

    @classmethod
    def straight(cls, indices: range) -> "Schedule":
        return cls(indices, indices)

    @classmethod
    def speech(cls, rows: int, avatar: range, kind: str = "pingpong") -> "Schedule":
        """`rows` output frames over the avatar frames `avatar`, played as `kind`."""
        if kind not in KINDS:
            raise ValueError(f"unknown schedule {kind!r}")
        # Frames past the M-th are never reached, and dropping them changes no
        # index: a ping-pong of n >= M frames turns only after frame M.
        return cls(range(rows), avatar[:rows], kind)

    def __len__(self) -> int:
        return len(self.outputs)

    def avatar_frames(self, positions) -> np.ndarray:
        """Dataset frame of each position in `positions` (int64 array)."""
        k = np.asarray(positions, dtype=np.int64)
        n = len(self.avatar)
        if self.kind == "straight":
            offset = k
        elif self.kind == "loop" or n == 1:
            offset = k % n
        else:
            p = k % (2 * n - 2)
            offset = np.where(p < n, p, 2 * n - 2 - p)
        return self.avatar.start + offset

    def avatar_frame(self, position: int) -> int:
        return int(self.avatar_frames([position])[0])

    def describe(self) -> str:
        first, last = self.avatar.start, self.avatar.stop - 1
        if self.kind == "straight":
            return f"frames {first}..{last}"
        return f"{len(self)} frames over avatar frames {first}..{last} ({self.kind})"


def as_schedule(frames) -> Schedule:
    """A Schedule as is; a range of dataset frames as the straight schedule."""
    return frames if isinstance(frames, Schedule) else Schedule.straight(frames)
