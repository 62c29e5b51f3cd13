"""Printing results: aligned tables (rich), ``--format json``, Go-like templates and ``-q`` ids.

List commands build *rows*: dicts keyed by the field names Docker's templates use (``ID``, ``Name``,
``Replicas`` …) whose values are already strings. Inspect commands print whole objects in the API's JSON
spelling. Both go through :func:`print_rows` / :func:`print_objects`, so every command honours the same
``--format`` rules.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from swarmctl import template
from swarmctl.errors import TemplateError

F = TypeVar("F", bound=Callable[..., Any])

#: (row key, column header) pairs, in display order.
Columns = Sequence[tuple[str, str]]


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned like ``docker … ls`` (three spaces apart), without trailing blanks."""
    table = Table(box=None, pad_edge=False, padding=(0, 3, 0, 0), show_edge=False, header_style=None)
    for h in header:
        table.add_column(h, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=sum(widths) + 3 * len(widths) + 1,
        color_system=None,
        force_terminal=False,
        highlight=False,
        soft_wrap=False,
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def print_rows(
    rows: Sequence[dict[str, str]],
    columns: Columns,
    *,
    fmt: str | None = None,
    quiet: bool = False,
    quiet_key: str = "ID",
) -> None:
    """Print list rows as a table (default), JSON lines (``json``), a template, or ids (``quiet``)."""
    if quiet:
        for row in rows:
            click.echo(row[quiet_key])
        return
    if fmt in (None, "", "table"):
        if rows or columns:
            click.echo(
                render_table([h for _, h in columns], [[row.get(k, "") for k, _ in columns] for row in rows])
            )
        return
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(row, separators=(",", ":"), ensure_ascii=False))
        return
    tpl = template.parse(fmt)
    lines = [tpl.render(row) for row in rows]
    if tpl.table:
        header = tpl.header().split("\t")
        cells = [line.split("\t") for line in lines]
        width = max([len(header), *(len(c) for c in cells)])
        click.echo(render_table(_pad(header, width), [_pad(c, width) for c in cells]))
        return
    for line in lines:
        click.echo(line)


def _pad(cells: list[str], width: int) -> list[str]:
    return cells + [""] * (width - len(cells))


def print_objects(objs: Sequence[Any], *, fmt: str | None = None) -> None:
    """Print inspected objects (plain JSON data): an indented JSON array, JSON lines, or a template."""
    if fmt in (None, ""):
        click.echo(json.dumps(list(objs), indent=4, ensure_ascii=False))
        return
    if fmt == "json":
        for obj in objs:
            click.echo(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
        return
    tpl = template.parse(fmt)
    for obj in objs:
        click.echo(tpl.render(obj))


def short_id(obj_id: str, no_trunc: bool = False) -> str:
    """An id as lists show it: the first 12 characters unless ``--no-trunc``."""
    return obj_id if no_trunc else obj_id[:12]


def _check_format(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # A template is checked before any request is made, so a typo fails fast and alone.
    if value and value not in ("table", "json"):
        try:
            template.parse(value)
        except TemplateError as e:
            raise click.BadParameter(str(e)) from None
    return value


def format_option(f: F) -> F:
    """The ``--format`` option, as Docker spells it."""
    return click.option(
        "--format",
        "fmt",
        metavar="FORMAT",
        callback=_check_format,
        help="Output format: 'table' (default), 'json', or a Go template such as '{{.Name}}'.",
    )(f)


def quiet_option(f: F) -> F:
    return click.option("-q", "--quiet", is_flag=True, help="Only display IDs.")(f)


def filter_option(f: F) -> F:
    return click.option(
        "-f",
        "--filter",
        "filter_args",
        multiple=True,
        metavar="KEY=VALUE",
        help="Filter output (repeatable).",
    )(f)


def no_trunc_option(f: F) -> F:
    return click.option("--no-trunc", is_flag=True, help="Do not truncate output.")(f)
