"""A management command whose `--help` ends with examples (kept as written: line breaks matter)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class ExampleCommand(BaseCommand):
    """Set `examples` to a few ready command lines; `--help` shows them under "examples:"."""

    examples: str = ""

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        epilog = "examples:\n" + "\n".join(f"  {line}" for line in self.examples.strip().splitlines())
        return super().create_parser(
            prog_name,
            subcommand,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )
