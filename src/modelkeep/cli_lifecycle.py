"""CLI commands for the model lifecycle: aliases, tags, descriptions, history, and the trash.

``alias``, ``tag``, ``describe``, ``history``, ``restore``, ``purge`` and ``prune``;
registered on the ``modelkeep`` group in :mod:`modelkeep.cli`. Each parses its
arguments, makes one library call and renders the result (``--json`` for scripts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .metadata import HistoryEntry
    from .registry import ModelPersistence

model_name_option = click.option("--model-name", required=True, help="Name of the model.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
version_scope_option = click.option("--version", help="Act on this version instead of the model itself.")


def _open(ctx: click.Context) -> ModelPersistence:
    from .cli_context import open_registry

    return open_registry(ctx)


def _emit_json(data: Any) -> None:
    from .cli_render import emit_json as emit

    emit(data)


def _status(ctx: click.Context, message: str) -> None:
    from .cli_context import print_status as status

    status(ctx, message)


def _table(headers: dict[str, str], rows: list[dict[str, Any]]) -> None:
    from .cli_render import print_table as _print_table

    _print_table(headers, rows)


def _scope(model_name: str, version: str | None) -> str:
    return f"{model_name} version {version}" if version else model_name


def _print_history(ctx: click.Context, entries: list[HistoryEntry], as_json: bool) -> None:
    if as_json:
        _emit_json([e.to_dict() for e in entries])
    elif not entries:
        _status(ctx, "No history.")
    else:
        headers = {
            "at": "When",
            "actor": "Who",
            "action": "Action",
            "model_name": "Model",
            "version": "Version",
            "alias": "Alias",
            "key": "Key",
            "before": "Before",
            "after": "After",
        }
        rows = [{**e.to_dict(), "before": _short(e.before), "after": _short(e.after)} for e in entries]
        if any(e.damaged for e in entries):
            headers["damaged"] = "Damaged"
        _table(headers, rows)


def _short(value: Any) -> Any:
    """A history value for a table cell: a version's content as its digest, trash times as such."""
    if isinstance(value, dict):
        if "sha256" in value:
            return f"sha256:{str(value['sha256'])[:12]}"
        if "deleted_at" in value:
            return "trashed" + (f" ({value['reason']})" if value.get("reason") else "")
    return value


# -- alias ------------------------------------------------------------------------------


@click.group()
def alias() -> None:
    """Named pointers at versions (production, champion...), with their history."""


@alias.command("set")
@model_name_option
@click.option("--alias", "alias_name", required=True, help="Alias to set, e.g. production.")
@click.option("--version", required=True, help="Version the alias should point at.")
@click.option("--expected", help="Only move the alias if it points at this version now (compare-and-set).")
@click.option("--dry-run", is_flag=True, help="Only say whether the move would pass its policies, and why.")
@json_option
@click.pass_context
def alias_set(
    ctx: click.Context,
    model_name: str,
    alias_name: str,
    version: str,
    expected: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Point an alias at a version (moving it if it exists). A move its policy refuses is an
    error naming each failed condition; --dry-run says whether it would pass (exit 1 if not)."""
    p = _open(ctx)
    if dry_run:
        check = p.check_alias_move(model_name, alias_name, version)
        if as_json:
            _emit_json(check.to_dict())
        else:
            click.echo(str(check))
        ctx.exit(0 if check.ok else 1)
    before = p.get_aliases(model_name).get(alias_name)
    p.set_alias(model_name, alias_name, version, expected=expected)
    if as_json:
        _emit_json({"model_name": model_name, "alias": alias_name, "version": version, "previous": before})
    else:
        was = f" (was {before})" if before and before != version else ""
        _status(ctx, f"{model_name}@{alias_name} -> {version}{was}")


@alias.command("rm")
@model_name_option
@click.option("--alias", "alias_name", required=True, help="Alias to remove.")
@json_option
@click.pass_context
def alias_rm(ctx: click.Context, model_name: str, alias_name: str, as_json: bool) -> None:
    """Remove an alias (the version stays)."""
    p = _open(ctx)
    version = p.delete_alias(model_name, alias_name)  # the library's role and protected-alias checks
    if as_json:
        _emit_json({"model_name": model_name, "alias": alias_name, "version": version})
    else:
        _status(ctx, f"Removed {model_name}@{alias_name} (pointed at {version})")


@alias.command("list")
@model_name_option
@json_option
@click.pass_context
def alias_list(ctx: click.Context, model_name: str, as_json: bool) -> None:
    """List a model's aliases and the versions they point at."""
    found = _open(ctx).get_aliases(model_name)
    if as_json:
        _emit_json(found)
    elif not found:
        _status(ctx, f"{model_name} has no aliases.")
    else:
        _table({"alias": "Alias", "version": "Version"}, [{"alias": a, "version": v} for a, v in found.items()])


@alias.command("history")
@model_name_option
@click.option("--alias", "alias_name", required=True, help="Alias whose moves to show.")
@click.option("--at", "at", help="Only print the version the alias pointed at, at this ISO-8601 time.")
@json_option
@click.pass_context
def alias_history(ctx: click.Context, model_name: str, alias_name: str, at: str | None, as_json: bool) -> None:
    """Every move of an alias, or (with --at) where it pointed at a given time."""
    p = _open(ctx)
    if at is not None:
        version = p.alias_at(model_name, alias_name, at)
        if as_json:
            _emit_json({"model_name": model_name, "alias": alias_name, "at": at, "version": version})
        elif version is None:
            _status(ctx, f"{model_name}@{alias_name} did not exist at {at}")
        else:
            click.echo(version)
        return
    _print_history(ctx, p.alias_history(model_name, alias_name), as_json)


# -- tag --------------------------------------------------------------------------------


@click.group()
def tag() -> None:
    """Key/value tags on a model, or on one version with --version."""


@tag.command("set")
@model_name_option
@version_scope_option
@click.argument("key")
@click.argument("value")
@json_option
@click.pass_context
def tag_set(ctx: click.Context, model_name: str, version: str | None, key: str, value: str, as_json: bool) -> None:
    """Set tag KEY to VALUE."""
    p = _open(ctx)
    p.set_tag(model_name, key, value, version=version)
    if as_json:
        _emit_json(p.get_tags(model_name, version=version))
    else:
        _status(ctx, f"Tagged {_scope(model_name, version)}: {key}={value}")


@tag.command("rm")
@model_name_option
@version_scope_option
@click.argument("key")
@json_option
@click.pass_context
def tag_rm(ctx: click.Context, model_name: str, version: str | None, key: str, as_json: bool) -> None:
    """Remove tag KEY."""
    p = _open(ctx)
    p.delete_tag(model_name, key, version=version)
    if as_json:
        _emit_json(p.get_tags(model_name, version=version))
    else:
        _status(ctx, f"Removed tag {key} from {_scope(model_name, version)}")


@tag.command("list")
@model_name_option
@version_scope_option
@json_option
@click.pass_context
def tag_list(ctx: click.Context, model_name: str, version: str | None, as_json: bool) -> None:
    """List the tags of a model or version."""
    found = _open(ctx).get_tags(model_name, version=version)
    if as_json:
        _emit_json(found)
    elif not found:
        _status(ctx, f"{_scope(model_name, version)} has no tags.")
    else:
        _table({"key": "Key", "value": "Value"}, [{"key": k, "value": v} for k, v in found.items()])


# -- describe, history ------------------------------------------------------------------


@click.command()
@model_name_option
@version_scope_option
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Remove the description.")
@json_option
@click.pass_context
def describe(
    ctx: click.Context, model_name: str, version: str | None, text: str | None, clear: bool, as_json: bool
) -> None:
    """Set (or with no TEXT, show) the description of a model or version."""
    p = _open(ctx)
    if clear and text is not None:
        raise click.UsageError("give either TEXT or --clear")
    if clear or text is not None:
        p.set_description(model_name, None if clear else text, version=version)
    current = p.get_description(model_name, version=version)
    if as_json:
        _emit_json({"model_name": model_name, "version": version, "description": current})
    elif clear or text is not None:
        _status(ctx, f"{'Cleared' if clear else 'Described'} {_scope(model_name, version)}")
    else:
        click.echo(current if current is not None else "")


@click.command()
@click.option("--model-name", help="Only this model.")
@click.option("--alias", "alias_name", help="Only changes of this alias.")
@click.option("--since", help="From this ISO-8601 time (inclusive; UTC unless it says otherwise).")
@click.option("--until", help="Up to this ISO-8601 time (exclusive).")
@click.option("--limit", type=click.IntRange(min=0), help="Only the newest N entries.")
@json_option
@click.pass_context
def history(
    ctx: click.Context,
    model_name: str | None,
    alias_name: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """The audit log: who saved, deleted, restored, purged, moved an alias, tagged or described what, and when."""
    entries = _open(ctx).history(model_name, alias=alias_name, since=since, until=until, limit=limit)
    _print_history(ctx, entries, as_json)


# -- trash --------------------------------------------------------------------------------


@click.command()
@model_name_option
@click.option("--version", required=True, help="Version to bring back from the trash.")
@json_option
@click.pass_context
def restore(ctx: click.Context, model_name: str, version: str, as_json: bool) -> None:
    """Bring a deleted version back from the trash."""
    _open(ctx).restore(model_name, version)
    if as_json:
        _emit_json({"model_name": model_name, "version": version, "restored": True})
    else:
        _status(ctx, f"Restored {model_name} version {version}")


@click.command()
@click.option("--model-name", help="Only this model's trash (default: all models).")
@click.option("--version", help="Only this trashed version (needs --model-name).")
@click.option("--older-than", help="Only versions trashed at least this long ago: 30d, 12h, 90m, 45s.")
@click.option("--dry-run", is_flag=True, help="Only list what would be purged.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def purge(
    ctx: click.Context,
    model_name: str | None,
    version: str | None,
    older_than: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Remove trashed versions for good, files included (asks for confirmation unless --yes)."""
    from .cli_context import stdin_is_interactive as _stdin_is_interactive
    from .index.lifecycle import as_utc_iso
    from .lifecycle import age_cutoff

    if version is not None and model_name is None:
        raise click.UsageError("--version needs --model-name")
    p = _open(ctx)
    cutoff = None if older_than is None else as_utc_iso(age_cutoff(older_than))
    # the public list_trash (not the index): a registry server's client has it too
    candidates = [(m, v) for m, v, at in p.list_trash(model_name) if cutoff is None or at < cutoff]
    if version is not None:
        candidates = [(m, v) for m, v in candidates if v == version]
        if not candidates:
            p.purge(model_name, version)  # raises the precise error (absent, or not in the trash)
    if dry_run or not candidates:
        if as_json:
            _emit_json({"purged": [], "would_purge": [list(c) for c in candidates]})
        else:
            for m, v in candidates:
                click.echo(f"would purge {m} {v}")
            _status(ctx, f"{len(candidates)} version(s) in the trash to purge" if dry_run else "Nothing to purge.")
        return
    if not yes:
        if not _stdin_is_interactive():
            raise click.ClickException("refusing to purge without confirmation: stdin is not a terminal; pass --yes")
        shown = ", ".join(f"{m} {v}" for m, v in candidates[:10]) + (" ..." if len(candidates) > 10 else "")
        click.confirm(f"Purge {len(candidates)} version(s) for good ({shown})?", abort=True, err=True)
    done = [p.purge(m, v)[0] for m, v in candidates]
    if as_json:
        _emit_json({"purged": [list(d) for d in done]})
    else:
        _status(ctx, f"Purged {len(done)} version(s)")


@click.command()
@model_name_option
@click.option("--keep-last", type=click.IntRange(min=0), required=True, help="How many of the newest versions to keep.")
@click.option("--dry-run", is_flag=True, help="Only list what would be moved to the trash.")
@json_option
@click.pass_context
def prune(ctx: click.Context, model_name: str, keep_last: int, dry_run: bool, as_json: bool) -> None:
    """Move all but the newest --keep-last versions to the trash (aliased versions are kept)."""
    trashed = _open(ctx).prune(model_name, keep_last, dry_run=dry_run)
    if as_json:
        _emit_json({"model_name": model_name, "dry_run": dry_run, "versions": trashed})
    else:
        verb = "Would move" if dry_run else "Moved"
        _status(ctx, f"{verb} {len(trashed)} version(s) of {model_name} to the trash: {', '.join(trashed) or '-'}")


def add_lifecycle_columns(persistence: ModelPersistence, model_name: str, table: Any) -> Any:
    """``compare``: an ``aliases`` column after ``version``, and a ``tags.<key>`` column per tag
    (the field's name in search filters)."""
    records = {r.version: r for r in persistence.list_version_records(model_name.partition("@")[0])}
    rows = [records.get(str(v)) for v in table["version"]]
    if any(r is not None and r.aliases for r in rows):
        table.insert(1, "aliases", [", ".join(r.aliases) if r is not None else "" for r in rows])
    keys = sorted({k for r in rows if r is not None for k in r.tags})
    for key in keys:
        table[f"tags.{key}"] = [r.tags.get(key) if r is not None else None for r in rows]
    return table
