"""The ``swarmctl`` command line."""

from __future__ import annotations

import click

from swarmctl import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Drive a Shoal cluster."""


@cli.command()
def version() -> None:
    """Print the client version."""
    click.echo(f"swarmctl {__version__}")


def main() -> None:
    """Console-script entry point."""
    cli()
