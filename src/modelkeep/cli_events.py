"""``modelkeep webhooks`` (add, list, rm, test, deliveries, redeliver) and ``modelkeep events``
(dispatch, watch): the registry's history, sent out as events (see docs/events.md)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from .cli_context import open_registry, print_status

if TYPE_CHECKING:
    from .registry import ModelPersistence
    from .webhooks.settings import DispatchSettings

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")


def _emit(data: Any) -> None:
    from .cli_render import emit_json

    emit_json(data)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM and SIGINT (Ctrl-C) while the block runs, so a long-running
    command finishes what it is doing and exits cleanly."""
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


#: ``--dispatch-events``, the flag of ``modelkeep ui`` and ``modelkeep serve``.
dispatch_events_option = click.option(
    "--dispatch-events", is_flag=True, help="Also deliver webhook events (as 'modelkeep events dispatch' does)."
)


@contextlib.contextmanager
def dispatching(persistence: ModelPersistence, enabled: bool) -> Iterator[None]:
    """Run the webhook dispatcher in a background thread while the block runs (when ``enabled``);
    stop it and give its leases up afterwards."""
    if not enabled:
        yield
        return
    from .webhooks.dispatch import start_in_thread

    dispatcher, thread = start_in_thread(persistence.webhooks.rows)
    # A server that re-raises SIGTERM once it has shut down (uvicorn does) would otherwise end the
    # process there, before the leases are given back: exit through the stack instead.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_quietly) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        dispatcher.stop.set()
        thread.join(dispatcher.settings.timeout + 5)


def _exit_quietly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def dispatch_options(command: Any) -> Any:
    """The retry and polling options of ``events dispatch`` (and of ``--dispatch-events``)."""
    from .webhooks.settings import DispatchSettings

    d = DispatchSettings()
    options = [
        click.option(
            "--poll", default=d.poll, show_default=True, type=click.FloatRange(0.01), help="Seconds between looks."
        ),
        click.option(
            "--timeout", default=d.timeout, show_default=True, type=click.FloatRange(0.1), help="POST timeout."
        ),
        click.option(
            "--backoff", default=d.backoff, show_default=True, type=click.FloatRange(0), help="First retry wait."
        ),
        click.option(
            "--max-backoff", default=d.max_backoff, show_default=True, type=click.FloatRange(0), help="Longest wait."
        ),
        click.option(
            "--max-attempts", default=d.max_attempts, show_default=True, type=click.IntRange(1), help="Then give up."
        ),
        click.option("--lease", default=d.lease, show_default=True, type=click.FloatRange(0.5), help="Lease seconds."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def settings_from(options: dict[str, Any]) -> DispatchSettings:
    from .webhooks.settings import DispatchSettings

    return DispatchSettings(**{k: options[k] for k in DispatchSettings.__dataclass_fields__})


@click.group("webhooks")
def webhooks() -> None:
    """Webhooks: URLs that receive the registry's events (signed JSON POSTs, retried, logged).

    'modelkeep events dispatch' (or 'modelkeep ui --dispatch-events') delivers them.
    """


@webhooks.command("add")
@click.argument("url")
@click.option("--events", "patterns", required=True, help="Event patterns, e.g. 'alias.*,version.created'.")
@click.option("--model", "model_glob", help="Only models matching this glob (e.g. 'churn*').")
@click.option(
    "--secret-file",
    required=True,
    type=click.Path(dir_okay=False),
    help="File holding the HMAC secret (16+ bytes); the index keeps only its path.",
)
@click.pass_context
def add(ctx: click.Context, url: str, patterns: str, model_glob: str | None, secret_file: str) -> None:
    """Deliver the events matching --events from now on to URL."""
    p = open_registry(ctx)
    webhook_id = p.webhooks.add(url, events=patterns, model=model_glob, secret_file=secret_file)
    print_status(ctx, f"Added webhook {webhook_id}: {url}")


@webhooks.command("list")
@json_option
@click.pass_context
def list_webhooks(ctx: click.Context, as_json: bool) -> None:
    """Every webhook, with what it receives and how far it got."""
    hooks = open_registry(ctx).webhooks.list()
    if as_json:
        _emit([h.to_dict() for h in hooks])
        return
    if not hooks:
        print_status(ctx, "No webhooks. Add one with: modelkeep webhooks add URL --events '*' --secret-file FILE")
    for h in hooks:
        scope = f"models {h.model_glob}" if h.model_glob else "all models"
        click.echo(f"{h.id}\t{h.url}\t{h.events}\t{scope}\tafter event {h.cursor}\tadded by {h.created_by}")


@webhooks.command("rm")
@click.argument("webhook_id", type=int)
@click.pass_context
def rm(ctx: click.Context, webhook_id: int) -> None:
    """Remove a webhook, its undelivered events and its delivery log."""
    open_registry(ctx).webhooks.remove(webhook_id)
    print_status(ctx, f"Removed webhook {webhook_id}.")


@webhooks.command("test")
@click.argument("webhook_id", type=int)
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1), help="Seconds to wait.")
@click.pass_context
def test(ctx: click.Context, webhook_id: int, timeout: float) -> None:
    """Send a signed 'ping' event to the webhook now; exit 1 unless it answers 2xx."""
    p = open_registry(ctx)
    hook = p.webhooks.get(webhook_id)
    outcome = p.webhooks.test(webhook_id, timeout=timeout)
    if not outcome.ok:
        raise click.ClickException(f"ping to {hook.url} failed: {outcome.error}")
    click.echo(f"ping to {hook.url}: HTTP {outcome.code} in {outcome.duration_ms:.0f} ms")


@webhooks.command("deliveries")
@click.argument("webhook_id", type=int, required=False)
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), help="Only deliveries in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="Newest deliveries to show.")
@json_option
@click.pass_context
def deliveries(ctx: click.Context, webhook_id: int | None, status: str | None, limit: int, as_json: bool) -> None:
    """The delivery log, newest first: each event sent, and every attempt (time, outcome, code)."""
    rows = open_registry(ctx).webhooks.deliveries(webhook_id, status=status, limit=limit)
    if as_json:
        _emit([r.to_dict() for r in rows])
        return
    if not rows:
        print_status(ctx, "No deliveries.")
    for r in rows:
        click.echo(
            f"{r.delivery_id}\twebhook {r.webhook_id}\tevent {r.history_id} {r.event} {r.model}\t{r.status}"
            f"\t{r.attempts} attempt(s)"
        )
        for a in r.log:
            code = "-" if a["response_code"] is None else a["response_code"]
            error = f"\t{a['error']}" if a["error"] else ""
            click.echo(f"  #{a['attempt']}\t{a['at'][:23]}\t{a['status']}\tHTTP {code}{error}")


@webhooks.command("redeliver")
@click.argument("delivery_id")
@click.pass_context
def redeliver(ctx: click.Context, delivery_id: str) -> None:
    """Queue a delivery again (one given up, or one the receiver lost)."""
    open_registry(ctx).webhooks.redeliver(delivery_id)
    print_status(ctx, f"Delivery {delivery_id} queued again.")


@click.group("events")
def events() -> None:
    """The registry's history as events: deliver them to webhooks, or watch them."""


@events.command("dispatch")
@dispatch_options
@click.pass_context
def dispatch(ctx: click.Context, **options: Any) -> None:
    """Deliver every webhook's events until stopped (SIGTERM or Ctrl-C exit cleanly)."""
    dispatcher = open_registry(ctx).webhooks.dispatcher(settings_from(options))
    print_status(ctx, f"Dispatching webhook events as {dispatcher.owner} (Ctrl-C to stop).")
    sys.stdout.flush()
    with stop_on_signals(dispatcher.stop):
        dispatcher.run()
    print_status(ctx, "Dispatcher stopped.")


@events.command("watch")
@click.option("--model", "model_name", help="Only this model's events.")
@click.option("--alias", help="Only this alias's events.")
@click.option("--events", "patterns", help="Only events matching these patterns, e.g. 'alias.*'.")
@click.option("--since", type=click.IntRange(0), help="Start after this event id (default: from now on).")
@click.option("--exec", "command", help="Run this command once per event, the event JSON on stdin.")
@click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(0.01), help="Seconds between looks.")
@click.pass_context
def watch(
    ctx: click.Context,
    model_name: str | None,
    alias: str | None,
    patterns: str | None,
    since: int | None,
    command: str | None,
    poll: float,
) -> None:
    """Print each new event as a JSON line, or run --exec CMD with it on stdin, until stopped.

    CMD is split like a shell would (no pipes or variables: use sh -c '...' for those); a
    command that fails is reported on stderr, and watching goes on.
    """
    import shlex
    import subprocess

    p = open_registry(ctx)
    argv = shlex.split(command) if command is not None else None
    if argv == []:
        raise click.BadParameter("empty command", param_hint="--exec")
    if since is None:  # from now on: after the largest committed id (a registry server's too)
        since = p.event_horizon()
    stop = threading.Event()
    # the feed before the banner: a feed that cannot start refuses at once (one error line)
    feed = p.events(since=since, model=model_name, types=patterns, follow=True, poll=poll, stop=stop)
    click.echo(f"Watching events after id {since} (Ctrl-C to stop).", err=True)
    with stop_on_signals(stop):
        for event in feed:
            if alias is not None and event["alias"] != alias:
                continue
            line = json.dumps(event, separators=(",", ":"))
            if argv is None:
                click.echo(line)
                sys.stdout.flush()
                continue
            try:
                done = subprocess.run(argv, input=line.encode() + b"\n", check=False)
            except OSError as exc:
                raise click.ClickException(f"--exec {argv[0]}: {exc.strerror or exc}") from exc
            if done.returncode != 0:
                click.echo(f"--exec exited {done.returncode} for event {event['id']}", err=True)
