"""Every live session's speech to features, on the scheduler's speech thread.

A pass goes over the sessions and hands each at most BLOCK_SECONDS of its
new speech to its mel front end, and only while what is decoded past the
speech its next frame needs is under AHEAD_SECONDS: a client that sends ten
minutes at once is decoded as it is shown, at the cost of one that speaks in
real time, and the work of a session that has gone stops with the pass that
finds it gone. Then one encoder call (at most ENCODER_BATCH windows at a
time) takes the new windows of every session. The slot thread never waits on
any of it: a row whose features are not final yet is an idle frame.

Each step is per row (gpucomp/speech/stream.py), so the features are those
of the whole utterance however its speech was cut into messages and blocks;
each block costs time in proportion to its samples (the front end keeps only
the rows its next windows read).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..core.errors import GpucompError
from ..speech.features import encode_windows
from ..speech.stream import samples_needed
from .protocol import SAMPLE_RATE
from .session import Session

AHEAD_SECONDS = 2.0   # speech decoded past what a session's next frame needs
BLOCK_SECONDS = 0.5   # speech of one session per pass
ENCODER_BATCH = 256   # windows per encoder call, all sessions together


def decode_speech(encoder, sessions: list[Session], fail: Callable[[Session, str], None]) -> bool:
    """One pass over `sessions`; whether one of them has more speech to decode
    within its horizon (then pass again at once)."""
    taken = []
    more = False
    for session in sessions:
        if session.closed:
            continue
        try:
            more |= _decode(session, taken)
        except (GpucompError, ValueError) as exc:
            fail(session, str(exc))
    if taken:
        windows = np.concatenate([w for _, _, w in taken])
        rows = np.concatenate([encode_windows(encoder, windows[lo : lo + ENCODER_BATCH])
                               for lo in range(0, len(windows), ENCODER_BATCH)])
        at = 0
        for stream, first, w in taken:
            stream.put_rows(first, rows[at : at + len(w)])
            at += len(w)
    return more


def _decode(session: Session, taken: list) -> bool:
    """Decode a block of the session's speech, oldest utterance first, as far
    as its horizon; whether the block ran out before the horizon was reached."""
    budget = int(BLOCK_SECONDS * SAMPLE_RATE)
    ahead, horizon = 0, int(AHEAD_SECONDS * SAMPLE_RATE)
    for utterance in session.queued():
        ahead += max(0, utterance.decoded - samples_needed(utterance.next_row, utterance.fps))
        if ahead >= horizon:
            return False
        if utterance.undecoded:
            if not budget:
                return True
            before = utterance.decoded
            utterance.decode(budget)
            budget -= utterance.decoded - before
            ahead += utterance.decoded - before
            first, windows = utterance.stream.take_windows()
            if len(windows):
                taken.append((utterance.stream, first, windows))
    return False
