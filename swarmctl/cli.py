"""The ``swarmctl`` command line: global options, error handling and the command groups.

Every failure ends the same way: one line ``Error: <message>`` on stderr and a non-zero exit code
(swarmctl.errors: 1 for bad usage or a refused request, 2 when the manager cannot be reached, 3 when a
change did not converge). That happens in :meth:`SwarmctlGroup.main`, so it holds for the console script
and for click's test runner alike.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from api.errors import ShoalError
from swarmctl import __version__
from swarmctl.client import DEFAULT_CONFIG_DIR, DEFAULT_HOST, TLSOptions
from swarmctl.context import AppContext
from swarmctl.errors import EXIT_USAGE

EXIT_INTERRUPTED = 130


class SwarmctlGroup(click.Group):
    """The root group: turns every error into one ``Error:`` line and an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        given = list(args if args is not None else sys.argv[1:])
        debug = "--debug" in given or "-D" in given
        try:
            rv = super().main(args, prog_name or "swarmctl", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(0)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            _fail(f"{e.format_message()}{hint}", EXIT_USAGE)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code or EXIT_USAGE)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", EXIT_INTERRUPTED)
        except ShoalError as e:
            if debug:
                import traceback

                traceback.print_exc()
            _fail(str(e), getattr(e, "exit_code", EXIT_USAGE))
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int) -> None:
    # Multi-line messages (several problems in one stack file) keep one problem per line.
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@click.group(
    name="swarmctl",
    cls=SwarmctlGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option(
    "-H",
    "--host",
    envvar="SHOAL_HOST",
    default=DEFAULT_HOST,
    show_default=True,
    help="Manager to talk to: unix:///path, http://host:port or https://host:port (env SHOAL_HOST).",
)
@click.option(
    "--config",
    "config_dir",
    envvar="SHOAL_CONFIG",
    default=DEFAULT_CONFIG_DIR,
    show_default=True,
    help="Directory of client TLS files (ca.pem, cert.pem, key.pem).",
)
@click.option("--tls", is_flag=True, help="Use TLS (implied by --tlsverify and https:// hosts).")
@click.option("--tlsverify", is_flag=True, envvar="SHOAL_TLS_VERIFY", help="Use TLS and verify the manager.")
@click.option("--tlscacert", default="", help="CA certificate to trust (default: <config>/ca.pem).")
@click.option("--tlscert", default="", help="Client certificate (default: <config>/cert.pem).")
@click.option("--tlskey", default="", help="Client key (default: <config>/key.pem).")
@click.option("-D", "--debug", is_flag=True, help="Show requests and tracebacks.")
@click.version_option(__version__, "-v", "--version", prog_name="swarmctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(
    ctx: click.Context,
    host: str,
    config_dir: str,
    tls: bool,
    tlsverify: bool,
    tlscacert: str,
    tlscert: str,
    tlskey: str,
    debug: bool,
) -> None:
    """Drive a Shoal cluster."""
    options: TLSOptions | None = None
    if tls or tlsverify or host.startswith("https://"):
        options = TLSOptions.from_dir(
            config_dir, ca=tlscacert, cert=tlscert, key=tlskey, verify=tlsverify or not tls
        )
    app = AppContext(host=host, tls=options, debug=debug, config_dir=config_dir)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command()
def version() -> None:
    """Print the client version."""
    click.echo(f"swarmctl {__version__}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print a shell completion script: eval "$(swarmctl completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"no completion for {shell}")
    comp = cls(cli, {}, "swarmctl", "_SWARMCTL_COMPLETE")
    click.echo(comp.source())


def _register() -> None:
    from swarmctl.commands import (
        cluster,
        container,
        image,
        localcluster,
        network,
        node,
        secret,
        service,
        stack,
        task,
        volume,
    )

    _ = localcluster  # adds up/down/status to the cluster group

    for group in (
        service.service,
        node.node,
        stack.stack,
        network.network,
        volume.volume,
        secret.secret,
        task.task,
        container.container,
        image.image,
        cluster.cluster,
    ):
        cli.add_command(group)


_register()


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
