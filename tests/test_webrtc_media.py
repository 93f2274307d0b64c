"""The WebRTC transport's parts without a network: each session's encoders
stamp every packet from the frame number, keyframes come every 2 s and on
request, sound keeps its place across skipped frames; the settings parse as
documented; ICE gathers where the server listens."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gpucomp.live.webrtc import IceServer, parse_bitrate
from gpucomp.live.webrtc_media import AudioEncoder, VideoEncoder, video_bitrate
from gpucomp_client.webrtc import host_candidate_addresses, is_loopback, keep_candidates


def _frame(seed: int, width: int = 320, height: int = 240) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (9, 9), 3)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)


@pytest.mark.parametrize("codec", ["H264", "VP8"])
def test_video_packets_are_stamped_from_the_frame_number(codec):
    encoder = VideoEncoder(codec, 320, 240, 25.0, 300_000)
    keys, stamps = [], []
    for n in range(0, 120):
        packets = encoder.encode(n, _frame(n % 7), keyframe=(n == 63))
        assert len(packets) == 1  # one packet per frame, no reordering, no delay
        stamps.append(packets[0].pts)
        keys += [n] if packets[0].is_keyframe else []
    assert stamps == [n * 3600 for n in range(120)]  # 90 kHz: n * 90000 / 25
    # Every 2 s at 25 fps, and on request (the 2 s count restarting from it).
    assert keys == [0, 50, 63, 113], keys


def test_video_stamps_round_for_fractional_rates():
    encoder = VideoEncoder("H264", 320, 240, 30000 / 1001, 300_000)
    assert [encoder.encode(n, _frame(0), False)[0].pts for n in (0, 1, 2, 30)] == \
        [0, round(3003), round(2 * 3003), round(30 * 3003)]


def test_h264_is_constrained_baseline():
    packet = VideoEncoder("H264", 320, 240, 25.0, 300_000).encode(0, _frame(0), False)[0]
    data = bytes(packet)
    sps = data[data.index(b"\x00\x00\x01\x67") + 4 :]  # the sequence parameter set
    assert sps[0] == 66 and sps[1] & 0x40  # profile_idc baseline, constraint_set1: constrained baseline


def test_sound_is_20ms_packets_at_the_frames_own_samples():
    encoder = AudioEncoder(25.0)
    tone = (np.sin(np.arange(640) / 5) * 8000).astype("<i2").tobytes()
    got = []
    for n in range(10):
        got += [start for start, _ in encoder.encode(n, tone)]
    # 10 frames of 40 ms: 1920 samples each at 48 kHz; the resampler holds back
    # its last few samples, so the last packet waits for the next frame.
    assert got == [960 * k for k in range(19)]
    # Frames never handed over (dropped before sending) are silence: the next one keeps its place.
    later = [start for start, _ in encoder.encode(15, tone)]
    assert later == [960 * k for k in range(19, 31)]


def test_sound_fits_each_frames_place_at_30_fps():
    encoder = AudioEncoder(30.0)
    starts = []
    for n in range(30):  # frames carry 533 or 534 samples at 16 kHz; one second in all
        starts += [s for s, _ in encoder.encode(n, bytes(2 * 534))]
    assert starts == [960 * k for k in range(len(starts))] and len(starts) == 49


def test_bitrate_scales_with_pixels():
    assert video_bitrate(2_000_000, 1280, 720) == 2_000_000
    assert video_bitrate(2_000_000, 640, 360) == 500_000
    assert video_bitrate(2_000_000, 1920, 1080) == 4_500_000


@pytest.mark.parametrize("text, value", [("2M", 2_000_000), ("800k", 800_000), ("2500000", 2_500_000),
                                         ("1.5M", 1_500_000)])
def test_bitrates_parse(text, value):
    assert parse_bitrate(text) == value


@pytest.mark.parametrize("text", ["", "fast", "2G", "10", "-1M"])
def test_bad_bitrates_are_refused(text):
    with pytest.raises(ValueError):
        parse_bitrate(text)


def test_ice_servers_parse():
    assert IceServer.parse("stun:stun.example.org:3478") == IceServer("stun:stun.example.org:3478")
    turn = IceServer.parse("turn:alice:s3cret@turn.example.org:3478?transport=tcp")
    assert turn == IceServer("turn:turn.example.org:3478?transport=tcp", "alice", "s3cret")
    assert turn.browser() == {"urls": "turn:turn.example.org:3478?transport=tcp", "username": "alice",
                              "credential": "s3cret"}
    for bad in ("http://example.org", "stun", "turn:turn.example.org:3478"):
        with pytest.raises(ValueError):
            IceServer.parse(bad)


def test_candidates_follow_the_listening_address():
    assert host_candidate_addresses("127.0.0.1") == ["127.0.0.1"]
    assert host_candidate_addresses("localhost") == ["127.0.0.1"]
    assert host_candidate_addresses("::1") == ["::1"]
    assert host_candidate_addresses("192.0.2.9") == ["192.0.2.9"]
    assert "127.0.0.1" in host_candidate_addresses("0.0.0.0")
    assert is_loopback("127.0.0.5") and not is_loopback("192.0.2.9") and not is_loopback("host.local")
    offer = ("v=0\r\na=candidate:1 1 udp 1 192.0.2.7 5000 typ host\r\na=candidate:2 1 udp 1 abc.local 5002 typ host\r\n"
             "a=candidate:3 1 udp 1 127.0.0.1 5001 typ host\r\n")
    kept = keep_candidates(offer, is_loopback)
    assert "192.0.2.7" not in kept and "abc.local" not in kept and "127.0.0.1 5001" in kept and kept.startswith("v=0")
