"""``modelkeep search``: find versions with the filter language (see the README's "Search")."""

from __future__ import annotations

from typing import Any

import click


@click.command()
@click.argument("filter_text", metavar="[FILTER]", required=False)
@click.option("--model-name", help="Only versions of this model.")
@click.option(
    "--order-by",
    "order_by",
    multiple=True,
    help="Sort field: -accuracy, 'accuracy DESC' or version (repeatable; default: model, then version).",
)
# The same default page size as ModelPersistence.search_versions(limit=100).
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="Page size.")
@click.option("--page-token", help="Continue after the page that printed this token.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def search(
    ctx: click.Context,
    filter_text: str | None,
    model_name: str | None,
    order_by: tuple[str, ...],
    limit: int,
    page_token: str | None,
    as_json: bool,
) -> None:
    """List the versions matching FILTER, e.g. 'accuracy > 0.9 AND tags.dataset = "v7"'."""
    from .cli_readonly import read_registry
    from .cli_render import emit_json as _emit_json
    from .cli_render import print_table as _print_table
    from .index.rows import scalar_fields
    from .search import parse_filter, parse_order_by
    from .search.compile import BUILTINS, field_names

    keys = parse_order_by(list(order_by)) if order_by else []
    node = parse_filter(filter_text) if filter_text else None
    page = read_registry(ctx).search_versions(
        node, model_name=model_name, order_by=list(order_by) or None, limit=limit, page_token=page_token
    )
    shown = [k.field for k in keys] + (field_names(node) if node is not None else [])
    columns = [name for name in dict.fromkeys(shown) if name not in BUILTINS and not name.startswith("tags.")]
    rows: list[dict[str, Any]] = []
    for record in page.items:
        values = scalar_fields(record.metadata)
        row: dict[str, Any] = {
            "model_name": record.model_name,
            "version": record.version,
            "aliases": list(getattr(record, "aliases", [])),
            "tags": dict(getattr(record, "tags", {})),
            "created_at": record.created_at,
        }
        for name in columns:
            key = name if name in values or not name.startswith("metrics.") else name[8:]
            row[name] = values.get(key)
        rows.append(row)
    if as_json:
        _emit_json({"items": rows, "next_page_token": page.next_page_token})
        return
    headers = {"model_name": "model", "version": "version", "aliases": "aliases", **{c: c for c in columns}}
    for row in rows:
        row["aliases"] = ",".join(row["aliases"])
    _print_table({**headers, "created_at": "created_at"}, rows)
    if page.next_page_token:
        click.echo(f"more: --page-token {page.next_page_token}", err=True)
