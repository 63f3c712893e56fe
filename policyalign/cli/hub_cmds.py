"""`pa push`, `pa pull`, `pa pack push`, `pa pack pull`: the Hub side of policyalign.

Each command parses options, calls one function (`policyalign.adapter_push`, `adapter_pull`,
`adapter_search`, `pack_hub`), and prints the result; provenance checks, token handling
(`policyalign.hub`) and error messages live there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InvalidInputError
from . import app, sub_app
from .common import License, PacksPath, print_json, registry


def _pack_group() -> typer.Typer:
    """The `pa pack` group: reuse it if another module registered it first, else create it."""
    for info in app.registered_groups:
        if info.name == "pack" and info.typer_instance is not None:
            return info.typer_instance
    return sub_app("pack", "Publish policy packs on the Hugging Face Hub and install them from it.")


pack_app = _pack_group()


def _warn(text: str) -> None:
    """Print a push's warning as it is found, before the upload: printed after it, it came too late to stop it."""
    typer.echo(f"warning: {text}", err=True)


@app.command("push")
def push(
    run_dir: Path = typer.Argument(..., help="Run directory holding adapter/ (and eval/, if evaluated)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Model repository to publish to, as ORG/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private; an existing public one is refused."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Tag for this version (default: PACK-vVERSION)."),
    license: Optional[str] = License,
) -> None:
    """Publish a run's LoRA adapter with a model card recording the pack version and eval results."""
    from ..adapter_push import push_adapter

    result = push_adapter(run_dir, repo_id, private=private, revision=revision, license=license, on_warning=_warn)
    typer.echo(f"pushed {result.repo_id} at tag {result.revision} (commit {result.commit[:12]}, {len(result.files)} files)")
    typer.echo(result.url)


@app.command("pull")
def pull(
    spec: Optional[str] = typer.Argument(None, metavar="ORG/NAME[@REV]", help="Adapter repository and optional revision."),
    pack: Optional[str] = typer.Option(None, "--pack", help="Find a published adapter for this pack instead: NAME, or NAME@RANGE (medical@1.0.0, medical@^1) for one trained on a version in it."),
    model: Optional[str] = typer.Option(None, "--model", help="With --pack: the base model the adapter must be for; MODEL@COMMIT only an adapter trained on that commit of it."),
    to: Optional[Path] = typer.Option(None, "--to", help="Directory to place the adapter in (default: the Hugging Face cache)."),
    packs_path: Optional[list[Path]] = PacksPath,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout: repository, revision, commit, "
                                 "path, the verified pack and base model, notes, warnings and the `pa eval` command "
                                 "that measures it."),
) -> None:
    """Download a published adapter, verify its provenance, and compare it with the local pack."""
    from ..adapter_pull import pull_adapter
    from ..adapter_search import pull_for_pack

    if (spec is None) == (pack is None):
        raise InvalidInputError("give either ORG/NAME[@REV] or --pack NAME", hint="e.g. `pa pull org/medical-qwen` or "
                                "`pa pull --pack medical --model Qwen2.5-7B`")
    if model is not None and pack is None:
        raise InvalidInputError("--model only applies with --pack", hint="drop --model, or use --pack NAME")
    reg = registry(packs_path)
    if pack is not None:
        result, chosen = pull_for_pack(pack, model=model, to=to, registry=reg)
        if not as_json:
            typer.echo(f"best match: {chosen.describe()}")
    else:
        result = pull_adapter(spec or "", to=to, registry=reg)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json(_pull_json(result, packs_path or []))
    else:
        _print_pull(result, packs_path or [])


def _pull_json(result, packs_path: list[Path]) -> dict:  # type: ignore[no-untyped-def]
    """`pa pull --json`: what the lines of `_print_pull` say, as data. A script that pulls in CI had to
    scrape "pulled ... to PATH" for where the adapter went, and the `pa eval` line for what to run next."""
    from ..card import parents_of

    pack, base = result.pack, result.base_model
    return {"repo_id": result.repo_id, "revision": result.revision, "commit": result.commit, "path": str(result.path),
            "pack": {"name": pack["name"], "version": pack["version"], "digest": pack["digest"],
                     "parents": parents_of(pack)},
            "base_model": {key: base.get(key) for key in ("id", "name", "revision", "commit")},
            "verified": result.covered, "notes": list(result.notes), "warnings": list(result.warnings),
            "eval_command": _eval_command(result, packs_path)}


def _base_pin(base) -> str | None:  # type: ignore[no-untyped-def]
    """The commit (else revision) of a Hub base the adapter was trained on: `main` may have moved on since."""
    return (base.get("commit") or base.get("revision")) if "/" in str(base["id"]) else None


def _eval_command(result, packs_path: list[Path]) -> str:  # type: ignore[no-untyped-def]
    """The `pa eval` that measures the pulled adapter on the pack version and base it was trained on."""
    from ..card import sh

    pack, base = result.pack, result.base_model
    pin = _base_pin(base)
    # name@version: a bare name would evaluate the newest local version, not the one it was trained on;
    # the --packs-path that found the pack here must be passed on, or `pa eval` reports it unknown
    search = "".join(f" --packs-path {sh(path)}" for path in packs_path)
    model = f"{base['id']}@{pin}" if pin else base["id"]
    return f"pa eval {sh(pack['name'] + '@' + pack['version'])} --model {sh(model)} --adapter {sh(result.path)}{search}"


def _print_pull(result, packs_path: list[Path]) -> None:  # type: ignore[no-untyped-def]
    from ..card import parents_of
    from ..models import TINY

    pack, base = result.pack, result.base_model
    typer.echo(f"pulled {result.repo_id}@{result.revision} (commit {result.commit[:12]}) to {result.path}")
    parents = "".join(f", extends {p['name']}@{p['version']} (digest {str(p['digest'])[:12]}…)" for p in parents_of(pack))
    typer.echo(f"verified: pack {pack['name']}@{pack['version']} (digest {pack['digest'][:12]}…){parents}, "
               f"base model {base['id']}" + (f"; {result.covered}" if result.covered else ""))
    for note in result.notes:
        typer.echo(note)
    hub, tiny = "/" in str(base["id"]), str(base["id"]) == TINY
    # `tiny` is no name transformers knows: policyalign makes its files, where tiny_model_path says
    base_id = repr(base["id"]) if hub else "tiny_model_path()" if tiny else repr("PATH/TO/BASE/MODEL")
    pin = _base_pin(base)
    typer.echo("\nload it with PEFT:\n"
               "  from peft import PeftModel\n"
               "  from transformers import AutoModelForCausalLM\n"
               + ("  from policyalign.tiny import tiny_model_path\n" if tiny else "")
               + f"  model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base_id}"
               f"{f', revision={pin!r}' if pin else ''}), {str(result.path)!r})")
    typer.echo(f"or evaluate it: {_eval_command(result, packs_path)}")


@pack_app.command("push")
def pack_push(
    path: Path = typer.Argument(..., help="Pack directory (validated before anything is uploaded)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Dataset repository to publish to, as ORG/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private; an existing public one is refused."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Tag for this version (default: vVERSION)."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Publish a policy pack as a dataset repository tagged with its version."""
    from ..pack_hub import push_pack

    result = push_pack(path, repo_id, private=private, revision=revision, registry=registry(packs_path), on_warning=_warn)
    typer.echo(f"pushed pack to {result.repo_id} at tag {result.revision} (commit {result.commit[:12]})")
    typer.echo(result.url)


@pack_app.command("pull")
def pack_pull(
    spec: str = typer.Argument(..., metavar="ORG/NAME[@VERSION]",
                               help="Pack repository and optional version or range (1.2.0, ^1, ~1.2, '>=1.0,<2': the "
                                    "highest published version in it); without one, the last pushed version."),
    to: Optional[Path] = typer.Option(None, "--to", help="Packs directory to install into (default: the user packs directory)."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Download a pack, verify and validate it, then install it (nothing is installed if any check fails)."""
    from ..pack_hub import pull_pack

    result = pull_pack(spec, to=to, registry=registry(packs_path))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"installed {result.name}@{result.version} (digest {result.digest[:12]}…) from "
               f"{result.repo_id}@{result.revision} into {result.path}")
    if result.replaced:
        typer.echo(f"replaced {result.replaced}, which was installed there (one version per pack in {result.path.parent}; "
                   f"`pa pack pull` it again to go back, or install it elsewhere with --to)", err=True)
