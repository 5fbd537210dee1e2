"""``modelkeep users``: the accounts that sign in to ``modelkeep ui`` (kept in the index)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from .cli_context import open_registry, print_status, stdin_is_interactive

if TYPE_CHECKING:
    from .registry import ModelPersistence

ROLE_CHOICE = click.Choice(["viewer", "editor", "admin"])


def _registry(ctx: click.Context) -> ModelPersistence:
    """The registry, refused when a configured identity (``MODELKEEP_TOKEN``) is not an admin
    (a registry server checks that itself, for every request)."""
    p = open_registry(ctx)
    access = getattr(p, "access", None)
    if access is not None:
        access.require(p.identity, "admin", "manage users")
    return p


def _password(from_stdin: bool, *, confirm: bool = True) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not stdin_is_interactive():
        raise click.ClickException("no terminal to ask for the password: pipe it in with --password-stdin")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=confirm))


@click.group("users")
def users() -> None:
    """Who may sign in to the UI, with which role (viewer, editor, admin).

    Users live in the registry's index, so everyone who shares the index shares
    them. Only an argon2 hash of each password is stored.
    """


@users.command("add")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, default="viewer", show_default=True, help="What the user may do.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--no-password", is_flag=True, help="No password: signs in only through an SSO proxy or a token.")
@click.pass_context
def add(ctx: click.Context, name: str, role: str, password_stdin: bool, no_password: bool) -> None:
    """Add a user (asks for the password twice unless --password-stdin)."""
    p = _registry(ctx)
    password = None if no_password else _password(password_stdin)
    p.users.add(name, password, role)
    print_status(ctx, f"Added {role} {name}.")


@users.command("list")
@click.pass_context
def list_users(ctx: click.Context) -> None:
    """Each user with their role and number of API tokens."""
    p = open_registry(ctx)
    rows = p.users.list()
    if not rows:
        click.echo("No users: the UI is sign-in free on loopback. Add one with: modelkeep users add NAME --role admin")
        return
    for row in rows:
        tokens = len(p.users.tokens(row.name))
        login = "password" if row.password_hash else "no password"
        click.echo(f"{row.name}\t{row.role}\t{login}\t{tokens} token(s)\tadded {row.created_at[:19]}")


@users.command("remove")
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Remove a user and their API tokens."""
    _registry(ctx).users.remove(name)
    print_status(ctx, f"Removed {name} and their tokens.")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from the first line of stdin.")
@click.pass_context
def passwd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a user's password (signs them out of running UIs)."""
    _registry(ctx).users.set_password(name, _password(password_stdin))
    print_status(ctx, f"Password of {name} changed.")


@users.command("role")
@click.argument("name")
@click.argument("role", type=ROLE_CHOICE)
@click.pass_context
def role(ctx: click.Context, name: str, role: str) -> None:
    """Change a user's role."""
    _registry(ctx).users.set_role(name, role)
    print_status(ctx, f"{name} is now {'an' if role in ('editor', 'admin') else 'a'} {role}.")


@users.command("token")
@click.argument("name")
@click.option("--label", default="", help="What the token is for (shown by 'users list').")
@click.option("--revoke", is_flag=True, help="Revoke every token of NAME instead.")
@click.pass_context
def token(ctx: click.Context, name: str, label: str, revoke: bool) -> None:
    """Make a personal API token for NAME and print it (once: only its hash is kept).

    Use it as MODELKEEP_TOKEN (library and CLI act as NAME, with NAME's role) or as
    'Authorization: Bearer <token>' against the UI.
    """
    p = _registry(ctx)
    if revoke:
        print_status(ctx, f"Revoked {p.users.revoke_tokens(name)} token(s) of {name}.")
        return
    click.echo(p.users.new_token(name, label))
