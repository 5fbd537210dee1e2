"""The ``modelkeep serve`` command: predictions over HTTP for a model reference."""

from __future__ import annotations

import click

from .cli_context import cli_state, open_registry
from .cli_events import dispatch_events_option, dispatching


@click.command("serve")
@click.argument("reference", metavar="MODEL[@ALIAS|@VERSION]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Pre-forked processes.")
@click.option(
    "--poll", default=5.0, show_default=True, type=click.FloatRange(0.05), help="Seconds between alias checks."
)
@click.option(
    "--max-body", default=16 * 1024 * 1024, show_default=True, type=click.IntRange(1), help="Largest body (bytes)."
)
@click.option("--require-signatures", is_flag=True, help="Serve only versions signed by a trusted key.")
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Bearer tokens (one a line) every request but /health must carry.",
)
@click.option("--allowed-host", multiple=True, metavar="NAME", help="Another Host name to answer to (repeatable).")
@click.option(
    "--method", "methods", multiple=True, metavar="NAME", help="Model method /predict?method= may call (repeatable)."
)
@click.option("--batch-max-rows", type=click.IntRange(1), help="Merge concurrent requests up to this many rows.")
@click.option("--batch-wait-ms", default=2.0, show_default=True, type=click.FloatRange(0), help="Longest batch wait.")
@click.option("--no-mmap", is_flag=True, help="Read artifacts into memory instead of mapping them.")
@dispatch_events_option
@click.pass_context
def serve(
    ctx: click.Context,
    reference: str,
    host: str,
    port: int,
    workers: int,
    poll: float,
    max_body: int,
    require_signatures: bool,
    token_file: str | None,
    allowed_host: tuple[str, ...],
    methods: tuple[str, ...],
    batch_max_rows: int | None,
    batch_wait_ms: float,
    no_mmap: bool,
    dispatch_events: bool,
) -> None:
    """Serve a model's predictions over HTTP (MLflow's /invocations protocol, /predict, /health,
    /model, /metrics).

    MODEL@ALIAS follows the alias: when it moves, the new version is loaded, verified and warmed
    in the background, then swapped in without a restart. MODEL@VERSION never changes.
    """
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"serve needs the [serve] extra: pip install 'modelkeep[serve]' ({exc})") from exc
    from .serve import serve as run
    from .serve.app import parse_reference

    persistence = open_registry(ctx)
    name, version, alias = parse_reference(reference)
    persistence.get_version(name, version, alias=alias)  # a missing model, version or alias is reported first
    state = cli_state(ctx)
    spec = {"config_path": state.config_path, "overrides": state.overrides, "trust": state.trust}
    ctx.with_resource(dispatching(persistence, dispatch_events))  # stopped when the command ends
    run(
        persistence,
        reference,
        host,
        port,
        workers=workers,
        token_file=token_file,
        allowed_hosts=allowed_host,
        settings_spec=spec,
        echo=click.echo,
        poll=poll,
        max_body=max_body,
        require_signatures=require_signatures,
        methods=tuple(dict.fromkeys(("predict", *methods))),
        batch_max_rows=batch_max_rows,
        batch_wait_ms=batch_wait_ms,
        mmap=not no_mmap,
    )
