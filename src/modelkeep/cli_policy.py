"""``modelkeep policy set|show|rm`` and ``modelkeep approve``: promotion rules for aliases.

Each command makes one library call (:class:`~modelkeep.promotions.PromotionMixin`) and
renders the result; a refused change is a one-line error like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli_context import open_registry, print_status
from .cli_render import emit_json, print_table

if TYPE_CHECKING:
    from .policies import Policy

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout and nothing else.")


def _show(policy: Policy) -> str:
    return f"{policy.model}@{policy.alias}: " + "; ".join(policy.describe())


@click.group("policy")
def policy() -> None:
    """Rules an alias move must follow (checked by every move: library, CLI, UI and serve).

    Only an admin may change them when an identity acts (MODELKEEP_TOKEN); every change is
    in the history (policy_set, policy_delete).
    """


@policy.command("set")
@click.option("--model-name", "model", required=True, help="A model name, or a glob such as 'churn*'.")
@click.option("--alias", "alias_name", required=True, help="The alias the policy governs, e.g. production.")
@click.option("--filter", "filter_", help="A search expression the version must match.")
@click.option(
    "--require-signature",
    "key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A public key file; the version must be signed by one of these (repeatable).",
)
@click.option("--require-input-signature", is_flag=True, help="The version must record an input signature.")
@click.option("--approvals", type=click.IntRange(0, 100), default=0, help="Approvals needed, not by the author.")
@click.option("--allowed", multiple=True, help="A user or key fingerprint that may move the alias (repeatable).")
@json_option
@click.pass_context
def set_policy(
    ctx: click.Context,
    model: str,
    alias_name: str,
    filter_: str | None,
    key_files: tuple[Path, ...],
    require_input_signature: bool,
    approvals: int,
    allowed: tuple[str, ...],
    as_json: bool,
) -> None:
    """Set the policy for an alias of the models named (replacing any for the same pair)."""
    stored = open_registry(ctx).set_policy(
        model,
        alias_name,
        filter=filter_,
        require_signature=list(key_files),
        require_input_signature=require_input_signature,
        approvals=approvals,
        allowed=list(allowed),
    )
    if as_json:
        emit_json(stored.to_dict())
    else:
        print_status(ctx, f"Policy set: {_show(stored)}")


@policy.command("show")
@click.option("--model-name", "model", help="Only the policies that govern this model.")
@json_option
@click.pass_context
def show_policies(ctx: click.Context, model: str | None, as_json: bool) -> None:
    """List the policies (of one model)."""
    found = open_registry(ctx).policies(model)
    if as_json:
        emit_json([p.to_dict() for p in found])
    elif not found:
        print_status(ctx, "No policies.")
    else:
        rows = [
            {"model": p.model, "alias": p.alias, "conditions": "; ".join(p.describe()), "by": p.updated_by}
            for p in found
        ]
        print_table({"model": "Models", "alias": "Alias", "conditions": "Conditions", "by": "Set by"}, rows)


@policy.command("rm")
@click.option("--model-name", "model", required=True, help="The model name or glob, as set.")
@click.option("--alias", "alias_name", required=True, help="The alias the policy governs.")
@click.pass_context
def remove_policy(ctx: click.Context, model: str, alias_name: str) -> None:
    """Remove a policy."""
    removed = open_registry(ctx).remove_policy(model, alias_name)
    print_status(ctx, f"Removed the policy {_show(removed)}")


@click.command("approve")
@click.argument("model_name")
@click.argument("version")
@click.option("--for", "alias_name", required=True, help="The alias the version is approved for.")
@json_option
@click.pass_context
def approve(ctx: click.Context, model_name: str, version: str, alias_name: str, as_json: bool) -> None:
    """Approve VERSION of MODEL_NAME for an alias (as MODELKEEP_TOKEN's owner or MODELKEEP_USER).

    The approval names the version's bytes: an overwrite needs new approvals. The author's
    own approval is recorded but does not count."""
    row = open_registry(ctx).approve(model_name, version, alias_name)
    if as_json:
        emit_json(row)
    else:
        print_status(ctx, f"{row['user']} approved {model_name} version {version} for {alias_name}")
