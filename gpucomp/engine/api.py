"""The Python API: one model loaded once, many avatars, frames on demand.

    with gpucomp.Engine("unet328.onnx", audio_encoder="ave.onnx") as engine:
        avatar = engine.load_avatar("avatars/anna")              # decoded once, cached (VRAM on gpu)
        engine.render(avatar, "anna.mp4", speech="hello.wav", format="mp4")
        for frame in engine.frames(avatar, engine.features("hi.wav", fps=avatar.fps)):
            ...                                                  # (H, W, 3) uint8 BGR
        frames = engine.composite([gpucomp.FrameRequest(avatar, 7, window), ...])

An `Engine` owns one backend: the model session, the kernels, and the frame
caches of every avatar loaded into it, under one memory budget. It serves one
call at a time: a call made while another runs (from another thread) is
refused with a GpucompError (exclusive.py), and a call after `close()` too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..core.contract import AUDIO_SHAPE, AUDIO_WINDOW, FEATURE_DIM, audio_window_rows
from ..core.errors import DatasetError, GpucompError
from ..core.telemetry import StageStats, decode_progress
from ..io.dataset import Dataset, load_features, rows_problem
from ..model.precision import PRECISIONS
from ..speech.schedule import KINDS as SCHEDULE_KINDS, Schedule
from .backends import RenderSettings, create, resolve
from .backends.base import FrameCache, FrameRef, batch_sizes
from .exclusive import OneCall
from .frame_iterator import FrameIterator, FrameStream, take
from .job import Job
from .pipeline import RenderResult

CUDNN_ALGOS = ("exhaustive", "heuristic", "default")


def audio_window(features: np.ndarray, k: int) -> np.ndarray:
    """The model's audio input for output frame k: feature rows k-8 .. k+7 as a
    (16, 512) float32 array, zeros where a row does not exist (PIPELINE.md, step 4)."""
    features = _array(features, "features")
    if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
        raise GpucompError(f"features must have shape (M, {FEATURE_DIM}), got {features.shape}")
    if not _is_integer(k):
        raise GpucompError(f"output frame {k!r} is not an integer")
    window = np.zeros((AUDIO_WINDOW, FEATURE_DIM), np.float32)
    lo, hi, at = audio_window_rows(int(k), features.shape[0])
    window[at : at + (hi - lo)] = features[lo:hi]
    return window


def check_feather(avatar: "Avatar", feather: int) -> int:
    """`feather`, or a GpucompError when it is wider than half one of the
    avatar's face rectangles (Avatar.max_feather)."""
    limit, frame = avatar.max_feather
    if feather > limit:
        p = avatar.dataset.placements[avatar.range.start + frame]
        raise GpucompError(f"--feather {feather} is wider than half the face rectangle of frame {frame} "
                           f"({p.width}x{p.height}), which would keep none of the face whole: use "
                           f"--feather {limit} or less")
    return feather


class Avatar:
    """An avatar folder (a dataset, or one `prepare` made), validated as `render`
    validates it; resident once an engine has cached its frames.

    Frames are numbered 0 .. len(avatar)-1 from its first frame (`start`)."""

    def __init__(self, dataset: Dataset, frames: range):
        self.dataset = dataset
        self.range = frames          # the dataset frames it shows
        self.cache: FrameCache | None = None
        self.engine: Engine | None = None

    @classmethod
    def open(cls, path, *, start: int | None = None, frames: int | None = None, clip_rects: bool = False,
             features: bool | None = None) -> "Avatar":
        """Open and validate without caching anything. `features`: None reads the
        folder's own aud_ave.npy when present, True requires it, False ignores it."""
        dataset = Dataset.open(Path(path), clip_rects=clip_rects, features=features)
        return cls(dataset, dataset.select(start or 0, frames))

    @property
    def path(self) -> Path:
        return self.dataset.root

    @property
    def start(self) -> int:
        return self.range.start

    @property
    def width(self) -> int:
        return self.dataset.width

    @property
    def height(self) -> int:
        return self.dataset.height

    @property
    def fps(self) -> float:
        return self.dataset.fps

    @cached_property
    def max_feather(self) -> tuple[int, int]:
        """(the widest feather every face takes, the frame that limits it): a
        feather of K blends K pixels in from each edge, so beyond half the
        narrowest rectangle no pixel keeps the model's face whole."""
        sides = [(min(p.width, p.height) - 1) // 2 for p in self.dataset.placements[self.range.start:self.range.stop]]
        frame = int(np.argmin(sides))
        return sides[frame], frame

    @property
    def features(self) -> np.ndarray | None:
        """Its own features (aud_ave.npy, (M, 512)), or None when it has none."""
        return self.dataset.features if self.dataset.features_path is not None else None

    @property
    def resident(self) -> bool:
        return self.cache is not None

    @property
    def nbytes(self) -> int:
        """Memory its cache takes (0 when not resident)."""
        return self.cache.nbytes if self.cache is not None else 0

    def __len__(self) -> int:
        return len(self.range)

    def __repr__(self) -> str:
        where = f", resident in {self.engine.backend}" if self.resident else ""
        return f"Avatar({str(self.path)!r}, frames {self.range.start}..{self.range.stop - 1}, " \
               f"{self.width}x{self.height} at {self.fps:g} fps{where})"


@dataclass(frozen=True)
class FrameRequest:
    """One frame for `Engine.composite`: avatar frame `frame` (0 .. len(avatar)-1)
    of a resident avatar, with the model's audio input `audio`, the (16, 512)
    window that `audio_window(features, k)` builds for output frame k;
    `feather`: its face-edge blend (default: the engine's)."""

    avatar: Avatar
    frame: int
    audio: np.ndarray
    feather: int | None = None


class Engine:
    """One lip-sync model (and optionally its audio encoder), loaded once, with
    the kernels built once, serving any number of avatars.

    backend: "auto" (gpu when a CUDA device is usable, else cpu), "cpu", "gpu"
    or "gpu-sim"; `engine.backend` is the one chosen and `engine.notice` says
    why auto fell back, or None. batch: frames per model call; workers:
    compositing and encoding threads; feather: blend the face edge over K
    pixels (0: the exact contract), the default of every render, which may
    give its own; cache_budget: bytes every cached avatar and
    the frames in flight may take together (None: what is free); precision:
    "fp32", or "fp16" (the model converted once and cached; frames still go
    in and out as float32); tf32, cuda_graph, cudnn_algo, prefer_nhwc (NHWC
    convolutions): the GPU engine's model settings; threads: the model's
    threads when it runs on the CPU (None: one per core).
    """

    def __init__(self, model, *, backend: str = "auto", audio_encoder=None, batch: int = 4, workers: int = 4,
                 feather: int = 0, cache_budget: int | None = None, tf32: bool = True, cuda_graph: bool = False,
                 cudnn_algo: str = "exhaustive", threads: int | None = None, precision: str = "fp32",
                 prefer_nhwc: bool = False):
        _check_int("batch", batch, 1, 256)
        _check_int("workers", workers, 1, 256)
        _check_int("feather", feather, 0, 64)
        if cache_budget is not None and (not isinstance(cache_budget, int) or cache_budget <= 0):
            raise GpucompError(f"cache_budget must be a positive number of bytes or None, got {cache_budget!r}")
        if threads is not None:
            _check_int("threads", threads, 1, 1024)
        if cudnn_algo.lower() not in CUDNN_ALGOS:
            raise GpucompError(f"cudnn_algo must be one of {', '.join(CUDNN_ALGOS)}, got {cudnn_algo!r}")
        if precision not in PRECISIONS:
            raise GpucompError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        name, self.notice = resolve(backend)
        self._call_guard = OneCall()
        self._streams: set[FrameStream] = set()  # unfinished frames() iterators
        self._submitted: set[PendingFrames] = set()  # submitted batches whose result is not taken yet
        self._closed = False
        self.model_path = Path(model)
        self.settings = RenderSettings(batch=batch, workers=workers, feather=feather, cudnn_algo=cudnn_algo.upper(),
                                       cuda_graph=cuda_graph, tf32=tf32, cache_budget=cache_budget, threads=threads,
                                       precision=precision, prefer_nhwc=bool(prefer_nhwc))
        self.stats = StageStats()
        self._backend = create(name, None, self.model_path, self.settings, self.stats)
        self.encoder = None
        try:
            if audio_encoder is not None:
                self._use_audio_encoder(audio_encoder)
        except BaseException:
            self._backend.close()
            raise
        self.avatars: list[Avatar] = []

    def use_audio_encoder(self, path):
        """Load the audio encoder that `features` and `render(speech=...)` use
        (replacing the one in use, unless it is the same file)."""
        with self._call("engine.use_audio_encoder"):
            self._use_audio_encoder(path)

    def _use_audio_encoder(self, path):
        from ..speech.features import AudioEncoder, encoder_providers

        path = Path(path)
        if self.encoder is not None and self.encoder.path.resolve() == path.resolve():
            return
        # On gpu with the model's own provider options, on a stream of its own:
        # on the model's, its runs would wait behind the model's batches.
        self.encoder = AudioEncoder(path, encoder_providers(
            self.backend, cudnn_algo=self.settings.cudnn_algo, tf32=self.settings.tf32,
            stream=self._backend.encoder_stream), threads=self.settings.threads)

    @property
    def backend(self) -> str:
        """The backend in use: cpu, gpu or gpu-sim."""
        return self._backend.name

    def describe(self) -> str:
        """The backend in a few words (the device, for gpu)."""
        return self._backend.describe()

    @property
    def memory_used(self) -> int:
        """Bytes the cached avatars and the frames in flight take of the budget."""
        return self._backend.held_bytes

    # -- avatars -------------------------------------------------------------------

    def load_avatar(self, path, *, start: int | None = None, frames: int | None = None,
                    clip_rects: bool = False, progress: bool = False) -> Avatar:
        """Validate an avatar folder (a dataset, or one `prepare` made) and
        cache its frames, or frames start .. start+frames-1 of it, in the
        engine's memory (VRAM on gpu, RAM on cpu). An avatar that does not fit
        the budget beside those already loaded is refused with the numbers,
        and nothing loaded is disturbed. The same frames of a folder already
        loaded are not loaded twice: the Avatar already loaded is returned."""
        with self._call("engine.load_avatar"):
            return self._load_avatar(path, start=start, frames=frames, clip_rects=clip_rects, progress=progress)

    def _load_avatar(self, path, *, start, frames, clip_rects, progress) -> Avatar:
        avatar = path if isinstance(path, Avatar) else Avatar.open(path, start=start, frames=frames,
                                                                   clip_rects=clip_rects)
        if avatar.resident:
            raise GpucompError(f"{avatar.path}: is already loaded")
        for loaded in self.avatars:
            if _same_frames(loaded, avatar):
                return loaded
        self._backend.warm_up({self.settings.batch})  # what the model needs is taken before the cache is sized
        what = f"loading avatar {avatar.path} ({len(avatar)} frames of {avatar.width}x{avatar.height})"
        report, close = decode_progress(len(avatar), "load", progress)
        try:
            avatar.cache = self._backend.load(avatar.dataset, avatar.range, progress=report, what=what)
        finally:
            close()
        avatar.engine = self
        self.avatars.append(avatar)
        return avatar

    def unload(self, avatar: Avatar):
        """Free what the avatar's cache holds; it may be loaded again later. An
        unfinished frames() iterator of it ends (its next step raises)."""
        with self._call("engine.unload"):
            if not isinstance(avatar, Avatar) or avatar.engine is not self or avatar.cache is None:
                raise GpucompError(f"{getattr(avatar, 'path', avatar)}: is not loaded in this engine")
            for stream in [s for s in self._streams if s.cache is avatar.cache]:
                self._end_stream(stream, f"{avatar.path}: was unloaded (engine.unload) before this frames() "
                                         f"iterator finished")
            self._backend.unload(avatar.cache)
            avatar.cache, avatar.engine = None, None
            self.avatars.remove(avatar)

    def avatar_frame(self, avatar: Avatar, frame: int) -> np.ndarray:
        """The resident avatar's own frame `frame` (H, W, 3 uint8 BGR), as cached:
        what a stream shows while the avatar is silent."""
        with self._call("engine.avatar_frame"):
            if not isinstance(avatar, Avatar) or avatar.engine is not self or avatar.cache is None:
                raise GpucompError(f"{getattr(avatar, 'path', avatar)}: is not loaded in this engine")
            return self._backend.cached_frame(avatar.cache, _frame_number(frame, avatar))

    # -- speech --------------------------------------------------------------------

    def features(self, speech, *, rate: int | None = None, smooth: bool = False, fps: float = 25.0,
                 progress: bool = False) -> np.ndarray:
        """(M, 512) float32 audio features of `speech` (a path to any audio file
        or an .npy of samples, or a 1-D float array) at `fps` video frames per
        second: what `python -m gpucomp features` computes. `rate`: the sample
        rate of an array or .npy (default 16 kHz); other rates are resampled."""
        with self._call("engine.features"):
            return self._speech_features(speech, rate=rate, smooth=smooth, fps=fps, progress=progress)[0]

    def _speech_features(self, speech, *, rate, smooth, fps, progress):
        """(features, FeatureTimes, seconds of speech, provider)."""
        from ..speech.features import compute_features

        if self.encoder is None:
            raise GpucompError("computing features from speech needs an audio encoder: "
                               "Engine(model, audio_encoder=ENCODER.onnx)")
        features, times, seconds = compute_features(speech, self.encoder, rate=rate, fps=fps, smooth=smooth,
                                                    progress=progress)
        return features, times, seconds, self.encoder.provider

    # -- frames --------------------------------------------------------------------

    def _plan(self, avatar: Avatar, features, schedule: str) -> tuple[np.ndarray, Schedule]:
        """(features, schedule): the avatar's own features straight through, or
        other features ((M, 512) array or .npy path) over it as `schedule`."""
        if features is None:
            own = avatar.features
            if own is None:
                raise DatasetError(f"{avatar.path}: has no features of its own (aud_ave.npy); "
                                   f"give speech or features")
            return own, Schedule.straight(avatar.range)
        if schedule not in SCHEDULE_KINDS:
            raise GpucompError(f"schedule must be one of {', '.join(SCHEDULE_KINDS)}, got {schedule!r}")
        features = _features_array(features)
        return features, Schedule.speech(len(features), avatar.range, schedule)

    def _feather(self, feather: int | None, avatar: Avatar) -> int:
        """A render's feather: its own, or the engine's default (check_feather)."""
        if feather is None:
            feather = self.settings.feather
        _check_int("feather", feather, 0, 64)
        return check_feather(avatar, int(feather))

    def _start(self, avatar: Avatar, features: np.ndarray, plan: Schedule, stats: StageStats, *, feather: int,
               progress: bool = False, output_reserve: int = 0) -> Job:
        """A job rendering `plan`: on the avatar's cache when it is resident,
        else on a cache decoded for this job alone (a bounded ring when the
        frames do not fit); every batch size it uses warmed up first."""
        if avatar.resident and avatar.engine is not self:
            raise GpucompError(f"{avatar.path}: is loaded in another engine")
        sizes = batch_sizes(len(plan), self.settings.batch)
        self._backend.check_batches(sizes)
        # Before any cache: the warm-up takes what the model needs (a cache is
        # sized from what is left), and a CUDA graph's capture must not meet
        # the decode-ahead thread's copies.
        self._backend.warm_up(sizes)
        if avatar.resident:
            return Job(self._backend, avatar.cache, plan, features, stats, feather=feather)
        report, close = decode_progress(len(plan.avatar), "load", progress)
        try:
            cache = self._backend.load(avatar.dataset, plan, progress=report, stream=True,
                                       output_reserve=output_reserve)
        finally:
            close()
        return Job(self._backend, cache, plan, features, stats, owns_cache=True, feather=feather)

    def frames(self, avatar: Avatar, features=None, *, schedule: str = "pingpong",
               feather: int | None = None) -> FrameIterator:
        """The finished frames (H, W, 3 uint8 BGR) in order: the avatar with its
        own features (features=None), or saying `features` ((M, 512) array or
        .npy path: M frames, the avatar played as `schedule`). An avatar that
        is not resident is decoded for this iteration alone. `feather`: this
        render's (default: the engine's). Other calls may come between its
        steps; unloading the avatar or closing the engine ends it
        (frame_iterator.py). `.close()` stops it early."""
        with self._call("engine.frames"):
            job = self._start(avatar, *self._plan(avatar, features, schedule), StageStats(),
                              feather=self._feather(feather, avatar))
            stream = FrameStream(job, self.settings.batch)
            self._streams.add(stream)
            return FrameIterator(self, stream)

    def warm_up(self, sizes=None):
        """Make batch sizes `sizes` (default: every size 1..batch) ready on the
        calling thread: bound, run until settled and, with cuda_graph, captured
        there (ONNX Runtime keeps its CUDA handles and graphs per thread). A
        live scheduler's render thread calls it before the first session, so no
        group it forms warms up mid-stream."""
        with self._call("engine.warm_up"):
            self._backend.warm_up(set(range(1, self.settings.batch + 1) if sizes is None else sizes))

    def composite(self, requests: Sequence[FrameRequest]) -> list[np.ndarray]:
        """Frames of resident avatars, in order, each (H, W, 3) uint8 BGR: the
        batch primitive a live scheduler calls. Requests of different avatars
        and frame sizes share model calls and composite launches (up to
        `batch` frames each); every frame equals that frame rendered alone.
        Every request is checked before any frame is computed."""
        with self._call("engine.composite"):
            refs, windows = self._requests(requests)
            frames: list[np.ndarray] = []
            batch = self.settings.batch
            for first in range(0, len(refs), batch):
                frames.extend(take(self._submit(refs[first : first + batch], windows[first : first + batch])))
            return frames

    def submit(self, requests: Sequence[FrameRequest]) -> "PendingFrames":
        """Start compositing 1 .. `batch` requests (checked as `composite`
        checks them) and return at once: the model and kernels queued on gpu,
        inference on a thread of its own on cpu. `.result()` gives what
        `composite` would. Submit the next batch before taking the last one's
        result, and the engine computes one while the other is copied and
        encoded; it holds three at most. Any other call takes the frames of
        the batches not yet taken first (they wait in their PendingFrames)."""
        with self._call("engine.submit", keep_submitted=True):
            if not 1 <= len(requests) <= self.settings.batch:
                raise GpucompError(f"submit takes 1 to the engine's batch of {self.settings.batch} requests, "
                                   f"got {len(requests)}")
            if len(self._submitted) >= self._backend.max_in_flight:
                raise GpucompError(f"engine.submit refused: {len(self._submitted)} submitted batches are not "
                                   f"taken yet; take the oldest one's result() first")
            refs, windows = self._requests(requests)
            pending = PendingFrames(self, self._submit(refs, windows))
            self._submitted.add(pending)
            return pending

    def _submit(self, refs: list[FrameRef], windows: list[np.ndarray]):
        audio = np.stack(windows).reshape((len(refs),) + AUDIO_SHAPE)
        return self._backend.submit_frames(refs, audio, self.stats)

    def _requests(self, requests: Sequence[FrameRequest]) -> tuple[list[FrameRef], list[np.ndarray]]:
        """Each request checked, as a frame reference and its audio window."""
        refs, windows = [], []
        for k, request in enumerate(requests):
            avatar = getattr(request, "avatar", None)
            if not isinstance(avatar, Avatar) or avatar.engine is not self or avatar.cache is None:
                raise GpucompError(f"request {k}: its avatar is not loaded in this engine (engine.load_avatar)")
            frame = _frame_number(request.frame, avatar, f"request {k}: ")
            audio = _array(request.audio, f"request {k}: audio")
            if audio.shape != (AUDIO_WINDOW, FEATURE_DIM):
                raise GpucompError(f"request {k}: audio must be a ({AUDIO_WINDOW}, {FEATURE_DIM}) window "
                                   f"(gpucomp.audio_window), got {audio.shape}")
            windows.append(_real_float32(audio, f"request {k}: audio"))
            refs.append(FrameRef(avatar.cache, frame, frame, k, self._feather(request.feather, avatar)))
        return refs, windows

    # -- files ----------------------------------------------------------------------

    def render(self, avatar: Avatar, output, *, speech=None, features=None, format: str = "png",
               schedule: str = "pingpong", smooth: bool = False, feather: int | None = None, audio=None,
               audio_rate: int | None = None,
               voice_track: bool = True, crf: int = 18, preset: str = "medium", encoder: str = "auto",
               resume: bool = False, progress: bool = False,
               on_message: Callable[[str], None] | None = None) -> RenderResult:
        """Everything the `render` command does, into `output`: a folder of
        frame_XXXXX.png/jpg, an mp4 (with the voice track), or a y4m/raw stream
        ('-': stdout). With `speech` (a path or samples at `audio_rate`, 16 kHz
        by default) or `features`, the avatar says it (played as `schedule`);
        with neither, it is rendered with its own features. `feather`: this
        render's face-edge blend (default: the engine's). `audio`: the mp4's
        voice track (default: the speech, else the avatar's own track).
        `resume` keeps the frames an interrupted png/jpg render finished.
        `on_message(text)` receives notices and status lines; `progress` draws
        bars on stderr. Ctrl-C raises RenderInterrupted (a KeyboardInterrupt)
        saying what was written."""
        from .render import render_to

        with self._call("engine.render"):
            return render_to(self, avatar, output, speech=speech, features=features, fmt=format, schedule=schedule,
                             smooth=smooth, feather=feather, audio=audio, audio_rate=audio_rate,
                             voice_track=voice_track, crf=crf, preset=preset, encoder=encoder, resume=resume,
                             progress=progress, on_message=on_message)

    # -------------------------------------------------------------------------------

    def close(self):
        """Free every cache, the model and the device buffers; unfinished
        frames() iterators end, and every later call is refused. Closing a
        closed engine does nothing."""
        if self._closed:
            return
        with self._call_guard("engine.close"):
            self._closed = True
            try:
                self._settle_submitted()  # queued work finishes before its buffers go
                for stream in list(self._streams):
                    self._end_stream(stream, "the engine was closed before this frames() iterator finished")
            finally:
                for avatar in list(self.avatars):
                    avatar.cache, avatar.engine = None, None
                self.avatars.clear()
                self._backend.close()

    @contextmanager
    def _call(self, name: str, current: FrameStream | None = None, keep_submitted: bool = False):
        """Hold the engine for one call (exclusive.py), refused once closed;
        unfinished frames() iterators other than `current`, and submitted
        batches unless `keep_submitted` (another submit), settle first, so the
        call finds no batch of theirs in flight."""
        with self._call_guard(name):
            if self._closed:
                raise GpucompError(f"{name} refused: the engine is closed")
            for stream in list(self._streams):
                if stream.done or stream.dropped:
                    self._end_stream(stream)
                elif stream is not current:
                    stream.settle()
            if not keep_submitted:
                self._settle_submitted()
            yield

    def _settle_submitted(self):
        for pending in list(self._submitted):
            pending.settle()

    def _end_stream(self, stream: FrameStream, why: str | None = None):
        self._streams.discard(stream)
        stream.finish(why)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Engine({str(self.model_path)!r}, backend={self.backend!r}, avatars={len(self.avatars)})"


class PendingFrames:
    """A batch Engine.submit started: `result()` waits for its frames."""

    def __init__(self, engine: Engine, pending):
        self._engine = engine
        self._pending = pending
        self._frames: list[np.ndarray] | None = None

    def result(self) -> list[np.ndarray]:
        """The frames in request order, each the caller's own (H, W, 3) uint8 BGR array."""
        if self._frames is None:
            with self._engine._call_guard("engine.submit(...).result()"):
                self.settle()
        return self._frames

    def settle(self):
        """Copy the frames out and give the batch's buffers back (the engine holds its call)."""
        if self._frames is None:
            self._engine._submitted.discard(self)
            self._frames = take(self._pending)
            self._pending = None


def _same_frames(a: Avatar, b: Avatar) -> bool:
    """Whether two avatars show the same frames of the same folder the same way."""
    def where(path):
        return path.resolve() if path is not None else None

    return (where(a.path) == where(b.path) and a.range == b.range and a.dataset.clip_rects == b.dataset.clip_rects
            and where(a.dataset.features_path) == where(b.dataset.features_path))


def _frame_number(frame, avatar: Avatar, where: str = "") -> int:
    """An avatar frame number, 0 .. len-1: an integer, never truncated (2.7 is refused, not frame 2)."""
    if not _is_integer(frame):
        raise GpucompError(f"{where}frame {frame!r} is not an integer")
    if not 0 <= frame < len(avatar):
        raise GpucompError(f"{where}frame {frame} is outside the avatar's frames 0..{len(avatar) - 1}")
    return int(frame)


def _array(values, what: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged nested lists, say
        raise GpucompError(f"{what} is not an array of numbers ({str(exc).splitlines()[0][:120]})") from None


def _real_float32(array: np.ndarray, what: str) -> np.ndarray:
    """`array` as C-contiguous float32, refused unless it holds real numbers,
    finite and within float32's range: what render and frames() require of
    features, and composite() of its windows."""
    if array.dtype.kind not in "fiu":  # complex, bool, strings, objects: nothing is cast silently
        raise GpucompError(f"{what} must be real numbers, got dtype {array.dtype}")
    problem = rows_problem(array)
    if problem:
        raise GpucompError(f"{what}: {problem}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _is_integer(value) -> bool:
    """An int or NumPy integer, not a bool, and never a float that would be truncated."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_int(name: str, value, lo: int, hi: int):
    if not _is_integer(value) or not lo <= value <= hi:
        raise GpucompError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


def _features_array(features) -> np.ndarray:
    """(M, 512) float32 features from an array or an .npy path, checked."""
    if isinstance(features, (str, Path)):
        return load_features(Path(features))
    array = _array(features, "features")
    if array.ndim != 2 or array.shape[1] != FEATURE_DIM or array.shape[0] == 0:
        raise GpucompError(f"features must have shape (M, {FEATURE_DIM}) with M >= 1, got {array.shape}")
    return _real_float32(array, "features")


__all__ = ["Avatar", "Engine", "FrameRequest", "PendingFrames", "RenderResult", "audio_window"]
