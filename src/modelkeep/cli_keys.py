"""``modelkeep keys ...``, ``modelkeep sign`` and ``modelkeep export-signed``.

Keys live outside the registry: the per-user key in the per-user config folder
(``MODELKEEP_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/modelkeep``, else
``~/.config/modelkeep``), other private keys wherever ``--out`` puts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .signing import Keyring


def _keyring(ctx: click.Context) -> Keyring:
    """The keys the current settings name (config file, MODELKEEP_* variables, global options)."""
    from .cli_context import cli_state as _state
    from .config import load_settings
    from .signing import resolve_keyring

    state = _state(ctx)
    p = load_settings(state.config_path, **state.overrides).persistence
    return resolve_keyring(
        signing_key=p.signing_key.get_secret_value() if p.signing_key else None,
        signing_key_file=p.signing_key_file,
        trusted_keys=p.trusted_keys or None,
        require_signatures=p.require_signatures,
    )


@click.group()
def keys() -> None:
    """Create, list and export signing keys."""


@keys.command()
@click.option("--name", help="A name recorded in every signature (default: user@host).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Write a new private key here (and its public key beside it, as .pub) instead of the per-user key.",
)
@click.option("--rotate", is_flag=True, help="Replace the per-user key; its public key stays trusted.")
@click.option("--force", is_flag=True, help="With --out: replace an existing file.")
def generate(name: str | None, out: Path | None, rotate: bool, force: bool) -> None:
    """Create an ECDSA P-256 key pair (mode 0600, never stored in a registry).

    Without --out, creates the per-user key that signs your saves (made on first
    save anyway). --rotate replaces it: versions signed with the old key still
    verify (its public key moves to the trusted folder) until `modelkeep sign --all`.
    """
    from . import keys as k

    if out is not None:
        if rotate:
            raise click.UsageError("--rotate replaces the per-user key; it cannot be combined with --out")
        key = k.generate(k.check_name(name))
        public = out.with_suffix(".pub") if out.suffix == ".pem" else out.with_name(out.name + ".pub")
        if not k.write_key_file(out, key.pem(), replace=force):
            raise click.ClickException(f"{out} already exists; pass --force to replace it")
        k.write_key_file(public, key.public.pem(), replace=True, mode=0o644)
        click.echo(f"private key {out} (keep it secret)\npublic key  {public}\nfingerprint {key.fingerprint}")
        return
    if rotate:
        new, old = k.rotate_user_key(name)
        if old is not None:
            click.echo(f"retired {old.public.label}; it stays trusted until its versions are re-signed")
        click.echo(f"per-user key {new.path}\nfingerprint {new.fingerprint}")
        return
    path = k.user_key_path()
    if path.exists():
        raise click.ClickException(f"the per-user key {path} already exists; use --rotate to replace it")
    key = k.generate(k.check_name(name) or k.default_key_name())
    if not k.write_key_file(path, key.pem()):
        raise click.ClickException(f"the per-user key {path} was created meanwhile by another process")
    click.echo(f"per-user key {path}\nfingerprint {key.fingerprint}")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def list_keys(ctx: click.Context, as_json: bool) -> None:
    """Show the key that signs saves and the keys whose signatures are trusted."""
    from . import keys as k
    from .cli_render import emit_json as _emit_json
    from .cli_render import print_table as _print_table

    ring = _keyring(ctx)
    private = ring.private or (k.user_key(create=False) if not ring.hmac_key else None)
    if private is not None:
        signs = {"kind": "ecdsa-p256", "fingerprint": private.fingerprint, "name": private.name}
        signs["path"] = str(private.path)
    elif ring.hmac_key:
        signs = {"kind": "hmac-sha256", "fingerprint": None, "name": "shared HMAC key", "path": None}
    else:
        signs = {"kind": "ecdsa-p256", "fingerprint": None, "name": "per-user key (created on first save)"}
        signs["path"] = str(k.user_key_path())
    trusted = [
        {"fingerprint": key.fingerprint, "name": key.name, "source": key.source} for key in ring.trusted_keys().values()
    ]
    if as_json:
        _emit_json({"signing_key": signs, "trusted_keys": trusted, "required": ring.required})
        return
    click.echo(f"signs with: {signs['name'] or ''} {signs['fingerprint'] or ''} {signs['path'] or ''}".rstrip())
    click.echo(f"signatures required at load: {'yes' if ring.required else 'no'}")
    if trusted:
        _print_table({"fingerprint": "Trusted key", "name": "Name", "source": "File"}, trusted)


@keys.command("export-public")
@click.option("--out", type=click.Path(path_type=Path), help="Write here instead of stdout.")
@click.pass_context
def export_public(ctx: click.Context, out: Path | None) -> None:
    """Print (or write) the public key of the ECDSA key that signs your saves."""
    ring = _keyring(ctx)
    key = ring.private or (ring.signer() if not ring.hmac_key else None)
    if key is None or isinstance(key, (str, bytes)):
        raise click.ClickException("the signing key is a shared HMAC secret, which has no public key")
    pem = key.public.pem()
    if out is None:
        click.echo(pem.decode(), nl=False)
    else:
        from . import keys as k

        k.write_key_file(out, pem, replace=True, mode=0o644)
        click.echo(f"public key {out}\nfingerprint {key.fingerprint}", err=True)


@keys.command()
@click.argument("public_key", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def trust(public_key: Path) -> None:
    """Trust signatures by PUBLIC_KEY for your user (copied into the per-user trusted folder)."""
    from . import keys as k

    key = k.load_public_key(public_key)
    click.echo(f"trusted {key.label}: {k.trust_public_key(key)}")


@keys.command("forget-seen")
@click.option("--model-name", help="Only this model (default: every model of the registry).")
@click.pass_context
def forget_seen(ctx: click.Context, model_name: str | None) -> None:
    """Forget the newest signed versions and alias moves you have loaded from this registry.

    Loads of "latest" or of an alias refuse to go back below what you have seen (a rolled-back
    index). After versions were removed on purpose without a signing key, this resets it.
    """
    from .cli_context import open_registry as _open
    from .cli_context import print_status as _status

    _open(ctx).forget_seen(model_name)
    _status(ctx, f"Forgot what you have seen of {f'model {model_name!r}' if model_name else 'every model'} here")


@click.command()
@click.option("--all", "all_models", is_flag=True, help="Re-sign every version of every model.")
@click.option("--model-name", help="Re-sign this model's versions.")
@click.option("--version", help="Only this version (with --model-name).")
@click.option(
    "--include-unsigned",
    is_flag=True,
    help="Also sign versions that are unsigned or signed by keys not trusted here (you vouch for them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")
@click.pass_context
def sign(
    ctx: click.Context,
    all_models: bool,
    model_name: str | None,
    version: str | None,
    include_unsigned: bool,
    as_json: bool,
) -> None:
    """Re-sign versions with the current signing key (after rotating a key).

    Versions whose signature verifies under a trusted key are re-hashed and
    re-signed; unsigned or untrusted ones are skipped unless --include-unsigned.
    """
    from .cli_context import open_registry as _open
    from .cli_context import print_status as _status
    from .cli_render import emit_json as _emit_json

    if all_models == (model_name is not None):
        raise click.UsageError("give either --all or --model-name")
    if version is not None and model_name is None:
        raise click.UsageError("--version needs --model-name")
    report = _open(ctx).sign(model_name, version, include_untrusted=include_unsigned)
    if as_json:
        _emit_json(report.to_dict())
        return
    for m, v, reason in report.skipped:
        click.echo(f"skipped {m} {v}: {reason}")
    _status(ctx, str(report))


@click.command("export-signed")
@click.option("--model-name", required=True, help="Name of the model.")
@click.option("--version", help="Version to export (default: latest).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write the version into.")
@click.option("--signature", type=click.Path(path_type=Path), help="Signature file (default: <out>.sig).")
@click.option("--force", is_flag=True, help="Replace --out and the signature file if they exist.")
@click.pass_context
def export_signed(
    ctx: click.Context, model_name: str, version: str | None, out: Path, signature: Path | None, force: bool
) -> None:
    """Export a version with an OpenSSF model-signing signature (same key as modelkeep's).

    Check it with: model_signing verify key OUT --signature OUT.sig --public_key KEY.pub
    (KEY.pub from `modelkeep keys export-public`).
    """
    from .cli_context import open_registry as _open
    from .cli_context import print_status as _status
    from .interop import export_signed as export

    folder, sig = export(_open(ctx), model_name, version, out, signature=signature, force=force)
    _status(ctx, f"Wrote {folder} and its signature {sig}")
