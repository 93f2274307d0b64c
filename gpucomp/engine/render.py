"""Rendering into files: features, schedule, voice track, resume record, sink,
progress, and what an interruption leaves (Engine.render).

Order matters for what a failure leaves behind: everything that can be
refused is checked before the output is touched, and the run record of an
image render is written only once the frames can be produced, so a render
that fails on bad input leaves an earlier run's record, and its resume, intact.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.errors import GpucompError
from ..core.telemetry import Progress, StageStats
from ..io.audio import AudioTrack, voice_track_for_mp4
from ..io.atomic import ensure_writable, is_special_file
from ..io.encode import IMAGE_FORMATS, check_frame_size, encoder_bytes, frame_name, open_sink, prepare_output_dir
from ..io.output_lock import OutputLock
from ..io.resume import FrameLog, bytes_digest, file_digest, run_record, video_record_matches, write_video_record
from ..io.video_out import STDOUT, VIDEO_FORMATS
from ..io.videoio import X264_PRESETS
from ..speech.melspec import SAMPLE_RATE
from . import pipeline

FORMATS = IMAGE_FORMATS + VIDEO_FORMATS


class RenderInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM in the command line) during a render: what was written."""

    def __init__(self, written: int, output: str, fmt: str):
        super().__init__(f"interrupted after {written} frames")
        self.written, self.output, self.format = written, output, fmt

    def describe(self) -> str:
        if self.format in IMAGE_FORMATS:
            return (f"{self.written} frames were written completely to {self.output}; --resume renders the rest")
        if self.output == STDOUT:
            return f"{self.written} frames were written to stdout"
        return f"the unfinished {self.output} was removed ({self.written} frames had been encoded)"


def check_smooth(smooth: bool, *, from_speech: bool):
    """Smoothing is part of computing features from speech; given features are used as they are."""
    if smooth and not from_speech:
        raise GpucompError("--smooth applies to features computed from --speech; --features and the avatar's own "
                           "are used as given (smooth them when computing them: features --smooth 3)")


def check_output(output: str, fmt: str, resume):
    """An output name and a resume mode a render can take, before anything is read."""
    if not output:  # Path("") is the current folder: frames would land among whatever is there
        raise GpucompError("the output is empty: give a folder (png, jpg), a file (mp4, y4m, raw) or - for stdout")
    if resume not in (False, True, "auto"):
        raise GpucompError(f"resume must be True, False or 'auto', got {resume!r}")
    if resume is True and fmt not in IMAGE_FORMATS:  # "auto" (a batch's rerun) takes a whole video too
        raise GpucompError(f"--resume works with png and jpg output; --format {fmt} is written whole")


def render_to(engine, avatar, output, *, speech, features, fmt, schedule, smooth, feather, audio, audio_rate,
              voice_track, crf, preset, encoder, resume, progress, on_message) -> pipeline.RenderResult:
    """Engine.render. `resume`: False (start over), True (keep the frames an
    interrupted png/jpg render of the same run finished; refuse another run's),
    or "auto" (a batch's rerun: keep what the same run finished, of images or
    a whole video, and start over after any other)."""
    say = on_message or (lambda text: None)
    output = str(output)
    if fmt not in FORMATS:
        raise GpucompError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if preset not in X264_PRESETS:
        raise GpucompError(f"preset must be one of x264's {', '.join(X264_PRESETS)}, got {preset!r}")
    check_output(output, fmt, resume)
    if speech is not None and features is not None:
        raise GpucompError("give speech or features, not both")
    check_smooth(smooth, from_speech=speech is not None)
    feather = engine._feather(feather, avatar)
    dataset = avatar.dataset
    check_frame_size(fmt, dataset.width, dataset.height)
    # The voice track, read and checked before the features are computed.
    if speech is not None:
        track = audio if audio is not None else (
            speech if isinstance(speech, (str, Path)) else
            AudioTrack(np.asarray(speech, dtype=np.float32).reshape(-1), audio_rate or SAMPLE_RATE))
    elif features is not None:
        track = audio
    else:
        track = audio if audio is not None else dataset.audio_path
    if not voice_track:
        track = None
    elif track is None and fmt == "mp4" and features is not None:
        say("note: the mp4 has no voice track: --features alone brings none; add --speech or --audio")
    if track is not None and fmt == "mp4":
        track = voice_track_for_mp4(track, audio_rate)
    # Features, and their source for the run record.
    features_path = None
    if speech is not None:
        features, times, seconds, provider = engine._speech_features(speech, rate=audio_rate, smooth=smooth,
                                                                     fps=avatar.fps, progress=progress)
        say(f"features: {seconds:.2f} s of speech -> {len(features)} frames (mel {times.mel:.2f} s, "
            f"encoder {times.encoder:.2f} s on {provider.replace('ExecutionProvider', '')})")
    elif isinstance(features, (str, Path)):
        features_path = Path(features)

    features, plan = engine._plan(avatar, features, schedule)
    indices = plan.outputs
    stats = StageStats()
    record = None
    if output != STDOUT and (fmt in IMAGE_FORMATS or resume == "auto"):
        used = replace(dataset, features=features,
                       features_path=features_path if plan.kind != "straight" else dataset.features_path)
        record = run_record(dataset=used, model_path=engine.model_path, schedule=plan, settings=engine.settings,
                            feather=feather, backend=engine.backend, fmt=fmt)
        if fmt not in IMAGE_FORMATS:  # what else decides a video's bytes
            record.update(crf=crf, preset=preset, encoder=encoder, voice=_track_identity(track, audio_rate))
    if resume == "auto" and fmt not in IMAGE_FORMATS and output != STDOUT:
        if video_record_matches(Path(output), record):  # finished by an earlier run of the same render
            return pipeline.RenderResult(0, 0.0, stats, kept=len(indices), backend=engine.describe(), output=output)
    lock = _lock_output(output, fmt)
    try:
        return _render_locked(engine, avatar, output, fmt=fmt, features=features, plan=plan, record=record,
                              stats=stats, feather=feather, track=track, audio_rate=audio_rate, crf=crf,
                              preset=preset, encoder=encoder, resume=resume, progress=progress, say=say)
    finally:
        if lock is not None:
            lock.release()


def _lock_output(output: str, fmt: str) -> OutputLock | None:
    """The output's lock, held for the whole render (none for stdout or a device)."""
    path = Path(output)
    if output == STDOUT or is_special_file(path):
        return None
    if fmt in IMAGE_FORMATS:
        return OutputLock(prepare_output_dir(path), folder=True).acquire()
    if path.is_dir():
        return None  # the sink says what is wrong with that
    ensure_writable(path.parent, path)
    return OutputLock(path, folder=False).acquire()


def _render_locked(engine, avatar, output, *, fmt, features, plan, record, stats, feather, track, audio_rate, crf,
                   preset, encoder, resume, progress, say) -> pipeline.RenderResult:
    """The render once its output is ours: the frame log, the sink, the frames."""
    dataset = avatar.dataset
    indices = plan.outputs
    log, keep = None, frozenset()
    if fmt in IMAGE_FORMATS and output != STDOUT:
        log = FrameLog(Path(output))
        if resume == "auto" and not log.same_run(record):
            log.start(record)  # another render was here: start over
        elif resume:
            keep = log.resume(record, {i: frame_name(i, fmt) for i in indices})
            if len(keep) == len(indices):
                log.close()
                return pipeline.RenderResult(0, 0.0, stats, kept=len(keep), backend=engine.describe(), output=output)
            say(f"resume: {len(keep)} of {len(indices)} frames are complete, rendering the other "
                f"{len(indices) - len(keep)}")
        else:
            log.start(record)
    sink = open_sink(fmt, output, dataset=dataset, indices=indices, workers=engine.settings.workers, stats=stats,
                     crf=crf, preset=preset, encoder=encoder, audio=track, audio_rate=audio_rate,
                     notify=lambda text: say(f"note: {text}"), log=log)
    job = None
    try:
        say(f"render: {engine.describe()}, {plan.describe()} of {dataset.root}, batch {engine.settings.batch}, "
            f"workers {engine.settings.workers} -> {sink.label} ({fmt})")
        t0 = time.perf_counter()
        job = engine._start(avatar, features, plan, stats, feather=feather, progress=progress,
                            output_reserve=encoder_bytes(fmt, dataset.width, dataset.height, preset,
                                                         "h264_nvenc" if encoder == "nvenc" else "libx264"))
        prepared = time.perf_counter() - t0
        bar = Progress(len(indices) - len(keep), stats, enabled=progress)
        try:
            result = pipeline.render(job, len(indices), sink, batch=engine.settings.batch, progress=bar, keep=keep)
        except KeyboardInterrupt:
            bar.close()
            raise RenderInterrupted(sink.written, sink.label, fmt) from None
        bar.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        if job is not None:
            job.close()
    if resume == "auto" and fmt not in IMAGE_FORMATS and output != STDOUT:
        write_video_record(Path(output), record)
    return replace(result, kept=len(keep), prepare_seconds=prepared, backend=engine.describe(), output=sink.label)


def _track_identity(track, rate) -> str | None:
    """A voice track's identity for the run record: its file's digest, or its samples'."""
    if track is None:
        return None
    if isinstance(track, AudioTrack):
        return bytes_digest(track.samples.tobytes() + str(track.rate).encode())
    return f"{file_digest(Path(track))}@{rate}"
