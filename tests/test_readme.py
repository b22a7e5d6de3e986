"""The README's command list names real `siked` subcommands, and every subcommand is listed."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from flows.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> set[str]:
    block = README.read_text(encoding="utf-8").split("## Commands", 1)[1].split("```", 2)[1]
    return {m.group(1) for line in block.splitlines() if (m := re.match(r"siked (\w+)", line.strip()))}


def parser_commands() -> set[str]:
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def test_the_readme_lists_exactly_the_subcommands_siked_has():
    assert readme_commands() == parser_commands()
