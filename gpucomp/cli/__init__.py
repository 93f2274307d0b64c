"""Command line: `python -m gpucomp {render,features,serve,batch,demo,synth,prepare,import-synctalk,model,check-model}`.

One module per command (its parser and its handler): render.py, features.py,
serve.py, batch.py, demo.py (with the built-in demo assets), synth.py,
prepare.py, import_synctalk.py, model.py, check_model.py. args.py holds the argument helpers every command line
shares, guard.py how every command ends: bad input is one line `error: ...` on
stderr and exit status 2; Ctrl-C or SIGTERM stops cleanly (every file already
written is complete) with status 130.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from . import batch, check_model, demo, features, import_synctalk, model, prepare, render, serve, synth
from .args import Parser
from .guard import EXIT_BAD_INPUT, EXIT_INTERRUPTED, guarded, show_input_warnings

# In the order `python -m gpucomp --help` lists them.
COMMAND_MODULES = (render, features, serve, batch, demo, synth, prepare, import_synctalk, model, check_model)

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m gpucomp", description="GPU-resident compositing for lip-sync video.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    command: list[str] = []
    handlers = {module.__name__.rsplit(".", 1)[1].replace("_", "-"): module.run for module in COMMAND_MODULES}

    def run():
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else argv):
            parser.print_help(sys.stderr)  # no command: what there is to run
            return EXIT_BAD_INPUT
        args = parser.parse_args(argv)
        command.append(args.command)
        with warnings.catch_warnings():
            show_input_warnings(quiet=getattr(args, "quiet", False))
            return handlers[args.command](args)
    return guarded(run, lambda: command[0] if command else None)
