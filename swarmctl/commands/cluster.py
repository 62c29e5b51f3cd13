"""``swarmctl cluster …``: the cluster object and the tokens new nodes join with."""

from __future__ import annotations

import os
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api import to_plain
from api.objects import NodeRole
from swarmctl.context import AppContext, pass_app
from swarmctl.output import format_option, print_objects


@click.group()
def cluster() -> None:
    """Manage the cluster."""


@cluster.command()
@format_option
@pass_app
def inspect(app: AppContext, fmt: str | None) -> None:
    """Display the cluster's settings and status."""
    print_objects([to_plain(app.client.cluster())], fmt=fmt)


@cluster.command("join-token")
@click.option("-q", "--quiet", is_flag=True, help="Only display the token.")
@click.option("--rotate", is_flag=True, help="Replace the token: the old one admits nobody any more.")
@click.argument("role", type=click.Choice(["worker", "manager"], case_sensitive=False))
@pass_app
def join_token(app: AppContext, role: str, quiet: bool, rotate: bool) -> None:
    """Show (or rotate) the token a new worker or manager joins with.

    Rotating does not affect nodes that have joined: they hold certificates and never send the token
    again.
    """
    client = app.client
    if rotate:
        token = client.rotate_join_token(role.lower())
        if not quiet:
            click.echo(f"Successfully rotated {role.lower()} join token.\n")
    else:
        tokens = client.cluster().status.join_tokens
        token = tokens.worker if role.lower() == "worker" else tokens.manager
    if quiet:
        click.echo(token)
        return
    click.echo(f"To add a {role.lower()} to this cluster, run the following command on the new host:\n")
    click.echo(f"    shoal-agent --token {token} --manager {_manager_addresses(app)}\n")


def _manager_addresses(app: AppContext) -> str:
    """Where agents reach the managers: the managers' node addresses, or the address swarmctl uses."""
    client = app.client
    addrs = [n.status.addr for n in client.nodes() if n.spec.role is NodeRole.MANAGER and n.status.addr]
    if addrs:
        return ",".join(f"{a}:2377" if ":" not in a else a for a in addrs)
    a = client.address
    return f"{a.host}:{a.port}" if a.scheme != "unix" else "<manager-address>:2377"


@cluster.command("client-cert")
@click.option(
    "--dir",
    "directory",
    default="",
    help="Where to write ca.pem, cert.pem and key.pem (default: the --config directory, ~/.shoal).",
)
@click.option("--force", is_flag=True, help="Replace files that exist.")
@pass_app
def client_cert(app: AppContext, directory: str, force: bool) -> None:
    """Get a client certificate for swarmctl over TCP (run as root on a manager host, over its socket).

    The key is made here and never leaves this machine; the manager signs its public half.
    """
    target = Path(directory or app.config_dir).expanduser()
    files = {name: target / name for name in ("ca.pem", "cert.pem", "key.pem")}
    existing = [str(f) for f in files.values() if f.exists()]
    if existing and not force:
        raise click.UsageError(f"{', '.join(existing)} exist already (use --force to replace them)")
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    reply = app.client.client_certificate(public.decode())
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(files["key.pem"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_pem)
    files["cert.pem"].write_text(reply.certificate)
    files["ca.pem"].write_text(reply.ca_certificate)
    click.echo(f"Wrote {files['ca.pem']}, {files['cert.pem']} and {files['key.pem']} ({reply.node_id}).")
    click.echo("Use them with: swarmctl --tlsverify -H tcp://MANAGER:2377 …")
