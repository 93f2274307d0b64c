"""Live sessions: many people talking to avatars at once from one engine.

    protocol.py   the messages of docs/LIVE.md, free of any transport
    session.py    one session: utterances, frame slots, what it has sent
    scheduler.py  the one thread that owns the engine and batches every session's frames
    server.py     aiohttp: the page, the WebSocket, the statistics

The client of this protocol is the gpucomp-client distribution (clients/python).
"""
