"""``posthoc-csra``: a thin click front end; each command parses options and calls one library function.

Layout: ``options.py`` declares every shared option once (and how bad input is reported); each command
is one module defining ``command``. Adding a command is one new module plus one ``main.add_command``
line below. torch and timm are imported inside the commands, so ``--help`` is instant.
"""
from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from . import bench, explain, export, score
from .options import CommandGroup


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="posthoc-csra")
@click.option("--quiet", "-q", is_flag=True, help="Only errors on stderr.")
def main(quiet):
    """Post hoc CSRA: better multi-label ranking from any timm classifier, no retraining.

    score = y_base + λ · y_att, with y_att the class-specific residual attention over the
    classifier's scores at every spatial location (Zhu & Wu, ICCV 2021).
    """
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)


main.add_command(score.command)
main.add_command(bench.command)
main.add_command(explain.command)
main.add_command(export.command)

__all__ = ["main"]
