"""Live sessions: many people talking to avatars at once from one engine.

    protocol.py   the messages of docs/LIVE.md, free of any transport
    session.py    one session: utterances, frame slots, what it has sent
    scheduler.py  the one thread that owns the engine and batches every session's frames
    server.py     aiohttp: the page, the WebSocket, the statistics
    webrtc.py     WebRTC sessions on aiortc: signalling, peers, the control channel, the frame pump
    webrtc_media.py  each WebRTC session's H.264/VP8 and Opus encoders and its packet tracks

The client of this protocol is the gpucomp-client distribution (clients/python).
"""
