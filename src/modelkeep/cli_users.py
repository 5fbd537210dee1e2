"""``modelkeep users``: the accounts that sign in to ``modelkeep ui`` and own API tokens (kept in
the index), their roles, grants and tokens."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from .cli_context import open_registry, print_status, stdin_is_interactive

if TYPE_CHECKING:
    from .registry import ModelPersistence

#: A user's registry role (``editor`` is still accepted: it is stored as ``maintainer``).
ROLE_CHOICE = click.Choice(["none", "viewer", "writer", "maintainer", "admin", "editor"], case_sensitive=False)
#: The role of a grant on some models.
GRANT_CHOICE = click.Choice(["viewer", "writer", "maintainer", "admin", "editor"], case_sensitive=False)


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
    """Who may sign in or use a token, with which role (none, viewer, writer, maintainer, admin).

    Users live in the registry's index, so everyone who shares the index shares
    them. Only an argon2 hash of each password is stored. A grant gives a role on
    the models a glob names; 'editor' is the old name of maintainer.
    """


@users.command("add")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, default="viewer", show_default=True, help="What the user may do.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--no-password", is_flag=True, help="No password: signs in only through an SSO proxy or a token.")
@click.pass_context
def add(ctx: click.Context, name: str, role: str, password_stdin: bool, no_password: bool) -> None:
    """Add a user (asks for the password twice unless --password-stdin)."""
    from .identity import validate_role

    p = _registry(ctx)
    password = None if no_password else _password(password_stdin)
    role = validate_role(role, allow_none=True)
    p.users.add(name, password, role)
    if role == "none":  # no registry role: they see only the models granted to them
        print_status(
            ctx, f"Added {name}, with no registry role: give them models with 'modelkeep users grant {name} GLOB ROLE'."
        )
    else:
        print_status(ctx, f"Added {role} {name}.")


@users.command("list")
@click.pass_context
def list_users(ctx: click.Context) -> None:
    """Each user with their role, number of API tokens and grants."""
    p = open_registry(ctx)
    rows = p.users.list()
    if not rows:
        click.echo("No users: the UI is sign-in free on loopback. Add one with: modelkeep users add NAME --role admin")
        return
    for row in rows:
        tokens = len(p.users.tokens(row.name))
        login = "password" if row.password_hash else "no password"
        grants = ", ".join(f"{role} on {glob}" for glob, role in p.users.grants(row.name))
        line = f"{row.name}\t{row.role}\t{login}\t{tokens} token(s)\tadded {row.created_at[:19]}"
        click.echo(line + (f"\t{grants}" if grants else ""))


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
    """Change a user's registry role (none: only what their grants give)."""
    from .identity import validate_role

    role = validate_role(role, allow_none=True)
    _registry(ctx).users.set_role(name, role)
    print_status(ctx, f"{name} is now {'an' if role == 'admin' else 'a'} {role}.")


@users.command("token")
@click.argument("name")
@click.option("--label", default="", help="What the token is for (shown by 'users tokens').")
@click.option("--expires", metavar="AGE", default=None, help="Refuse the token after this long: 30d, 12h, 90m, 2w.")
@click.option("--revoke", is_flag=True, help="Revoke every token of NAME instead (same as 'users revoke NAME').")
@click.pass_context
def token(ctx: click.Context, name: str, label: str, expires: str | None, revoke: bool) -> None:
    """Make a personal API token for NAME and print it (once: only its hash is kept).

    Use it as MODELKEEP_TOKEN (library and CLI act as NAME, with NAME's role and grants) or as
    'Authorization: Bearer <token>' against the UI.
    """
    p = _registry(ctx)
    if revoke:
        print_status(ctx, f"Revoked {p.users.revoke_tokens(name)} token(s) of {name}.")
        return
    expires_in = None
    if expires is not None:
        from .lifecycle import parse_age

        expires_in = parse_age(expires)
    click.echo(p.users.new_token(name, label, expires_in=expires_in))


@users.command("tokens")
@click.argument("name")
@click.pass_context
def tokens(ctx: click.Context, name: str) -> None:
    """NAME's API tokens: id (for 'users revoke NAME --token ID'), label, created, expires."""
    p = _registry(ctx)
    from .users import validate_user_name

    if p.users.get(validate_user_name(name)) is None:
        raise click.ClickException(f"no user '{name}': see 'modelkeep users list'")
    found = p.users.tokens(name)
    if not found:
        click.echo(f"{name} has no API tokens. Make one with: modelkeep users token {name}")
        return
    for t in found:
        expires = f"expires {t.expires_at[:19]}" if t.expires_at else "never expires"
        click.echo(f"{t.token_id or '(no id)'}\t{t.label}\tcreated {t.created_at[:19]}\t{expires}")


@users.command("revoke")
@click.argument("name")
@click.option("--token", "token_id", metavar="ID", default=None, help="Revoke only this token (see 'users tokens').")
@click.pass_context
def revoke(ctx: click.Context, name: str, token_id: str | None) -> None:
    """Revoke NAME's API tokens (every one, or the one --token names); they are refused at once."""
    p = _registry(ctx)
    if token_id is None:
        print_status(ctx, f"Revoked {p.users.revoke_tokens(name)} token(s) of {name}.")
        return
    p.users.revoke_token(name, token_id)
    print_status(ctx, f"Revoked token {token_id} of {name}.")


@users.command("grant")
@click.argument("name")
@click.argument("glob")
@click.argument("role", type=GRANT_CHOICE)
@click.pass_context
def grant(ctx: click.Context, name: str, glob: str, role: str) -> None:
    """Give NAME ROLE on the models GLOB names (churn-*), on top of their registry role."""
    from .identity import validate_role

    role = validate_role(role)
    _registry(ctx).users.grant(name, glob, role)
    print_status(ctx, f"{name} is {'an' if role == 'admin' else 'a'} {role} of the models '{glob}' names.")


@users.command("ungrant")
@click.argument("name")
@click.argument("glob")
@click.pass_context
def ungrant(ctx: click.Context, name: str, glob: str) -> None:
    """Remove NAME's grant on GLOB (as it was granted)."""
    _registry(ctx).users.revoke_grant(name, glob)
    print_status(ctx, f"Removed the grant of {name} on '{glob}'.")
