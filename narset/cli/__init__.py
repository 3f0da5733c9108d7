"""The `narset` command-line interface."""

from narset.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
