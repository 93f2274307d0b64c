"""`python -m gpucomp.bench`: backends side by side on the same frames.

    runs.py       end-to-end runs of each backend and the frame comparison
    isolation.py  each stage alone: composite-only, copy bandwidth, inference-only, encode-only
    machine.py    what the figures were measured on
    reports.py    JSON, Markdown and PNG plots
    cli.py        options and the order of things
"""
