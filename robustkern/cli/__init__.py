"""The ``robustkern`` command line: one module per command (its parser beside its run), the
options and argument types in ``options``, the shared prologue in ``setup``."""

from __future__ import annotations

import argparse
import sys

import torch

import robustkern
from robustkern import data  # noqa: F401  (tests replace data.load to see that nothing loads)
from robustkern.cli import (
    attack,
    certify,
    corruptions,
    evaluate,
    fourier,
    spectral,
    suite,
    sweep,
    tradeoff,
    train,
)

COMMANDS = (
    suite,
    sweep,
    attack,
    evaluate,
    certify,
    spectral,
    fourier,
    corruptions,
    train,
    tradeoff,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustkern", description="Test and improve the robustness of models."
    )
    parser.add_argument("--version", action="version", version=robustkern.__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"robustkern {args.command}: error: {e}", file=sys.stderr)
        return 2
