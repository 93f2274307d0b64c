"""Live sessions: many people talking to avatars at once from one engine.

    protocol.py   the messages of docs/LIVE.md, free of any transport
    session.py    one session: its speech (within its bounds), frame slots, what it has sent
    speech.py     every session's speech to features, as far ahead as it is needed
    scheduler.py  the threads around the one engine: speech, slots, batched rendering
    admission.py  who may use which endpoint (Host, Origin, token, places, time limits), the access log
    server.py     aiohttp: the page, the WebSocket, the statistics
    webrtc.py     WebRTC sessions on aiortc: signalling, peers, the control channel, the frame pump
    webrtc_media.py  each WebRTC session's H.264/VP8 and Opus encoders and its packet tracks

The client of this protocol is the gpucomp-client distribution (clients/python).
"""
