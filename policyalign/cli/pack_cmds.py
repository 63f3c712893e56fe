"""Registry commands: list, show, validate, new, bump, render, index."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from . import app
from .common import PacksPath, console, fold_table, load, print_json, print_rule, registry

if TYPE_CHECKING:
    from ..errors import Problem
    from ..registry import Registry


@app.command("list")
def list_packs(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """List the packs found on the search path."""
    from ..errors import PackError, problem_count
    from ..pack import load_pack

    reg = registry(packs_path)
    rows = []
    for loc in reg.discover():
        try:
            pack = load_pack(loc.path, registry=reg)
        except PackError as exc:
            rows.append({"name": loc.name, "version": loc.version, "path": str(loc.path), "valid": False,
                         "problems": problem_count(exc.problems)})
            continue
        rows.append({"name": pack.name, "version": pack.version, "title": pack.title, "path": str(loc.path),
                     "valid": True, "categories": len(pack.categories),
                     "eval": {s.name: len(s.items) for s in pack.eval_sets}, "digest": pack.digest})
    rows += [_unreadable_row(path, reg) for path in reg.unreadable()]
    if as_json:
        print_json(rows)
        return
    _print_pack_table(rows)


def _unreadable_row(path: Path, reg: "Registry") -> dict:
    """An invalid row for a pack whose manifest can't even be read for its name; `problem` says why."""
    from ..errors import PackError, problem_count
    from ..pack import load_pack

    row = {"name": path.name, "version": "", "path": str(path), "valid": False, "problems": 1,
           "problem": "pack.yaml could not be read for its name and version"}
    try:
        load_pack(path, registry=reg)
    except PackError as exc:
        row.update(problems=problem_count(exc.problems), problem=str(exc.problem))
    return row


def _printable(text: str) -> str:
    """`text` with control characters escaped: an unreadable pack's row shows its directory's name, and a
    directory named `x\x1b]0;...` sent the escape sequence to the terminal."""
    from ..templates import text_problem

    return ascii(text)[1:-1] if text_problem(text) else text


def _print_pack_table(rows: list[dict]) -> None:
    from rich.markup import escape

    table = fold_table("name", "version", "title", "categories", "eval sets", "digest", fold=("name",))
    for row in rows:
        # Pack text is untrusted: escaped, so "[/]" or "[link=...]" in a title is shown, not interpreted.
        name, version = escape(_printable(row["name"])), escape(_printable(row["version"]))
        if not row["valid"]:
            why = escape(_printable(f": {row['problem']}")) if "problem" in row else ""
            table.add_row(name, version, f"[red]invalid ({row['problems']} problems){why}[/]", "", "", "")
            continue
        sets = escape(", ".join(f"{k} {v}" for k, v in row["eval"].items()))
        table.add_row(name, version, escape(row["title"]), str(row["categories"]), sets, row["digest"][:12])
    console().print(table)


@app.command()
def show(
    pack: str = typer.Argument(..., help="Pack name, name@range, or path."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Show a pack: summary, composed policy, and categories with actions and lock state."""
    from rich.markup import escape

    p = load(pack, packs_path)
    out = console()
    # Pack text is untrusted: escaped, so "[/]" or "[link=...]" in a title is shown, not interpreted.
    out.print(f"[bold]{escape(p.title)}[/] ({escape(p.ref)})  digest {p.digest}")
    out.print(p.summary, markup=False)
    if p.extends:
        out.print(f"extends: {', '.join(p.extends)}", markup=False)
    print_rule(out, "policy (the teacher's system message)")
    out.print(p.policy, markup=False)
    table = fold_table("category", "title", "action", "locked", "from", "seeds", fold=("category",))
    for cat in p.categories:
        table.add_row(escape(cat.id), escape(cat.title), cat.action, "locked" if cat.locked else "", escape(cat.origin),
                      str(len(cat.seeds)))
    out.print(table)


@app.command()
def validate(
    paths: Optional[list[Path]] = typer.Argument(None, help="Pack directories to validate."),
    all_packs: bool = typer.Option(False, "--all", help="Validate every pack under --dir and check packs/INDEX.json "
                                   "(parents resolve inside --dir only, not --packs-path, PA_PACKS_PATH or $PA_HOME)."),
    packs_dir: Path = typer.Option(Path("packs"), "--dir", help="The packs directory for --all."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Validate packs, reporting every problem at once (exit code 2 when any is invalid)."""
    from ..errors import InvalidInputError, problem_count
    from ..registry import Registry
    from ..validation import validate_all, validate_paths

    if not paths and not all_packs:
        raise InvalidInputError("nothing to validate", hint="pass pack directories, or --all")
    reg = registry([*(packs_path or []), *([packs_dir] if packs_dir.is_dir() else [])])  # --dir is checked by --all
    # --all checks the repository's packs against its INDEX.json, so their parents must resolve
    # inside --dir only: a pack in $PA_HOME/packs or PA_PACKS_PATH must not change the digests.
    report = validate_all(packs_dir, Registry([packs_dir])) if all_packs else validate_paths(list(paths or []), reg)
    if all_packs and paths:
        extra = validate_paths(list(paths), reg)
        report.packs += extra.packs
        report.failures.update(extra.failures)
    for pack in report.packs:
        if str(pack.root) not in report.failures:
            typer.echo(f"ok       {pack.ref:<28} {pack.root}  digest {pack.digest[:12]}")
    for path, leftovers in report.drafts.items():
        if path not in report.failures:
            typer.echo(f"draft    {path}: {len(leftovers)} piece(s) of `pa new` stand-in text left "
                       "(valid, but `pa pack push` refuses it until they are replaced)", err=True)
            for problem in leftovers:
                typer.echo(f"  {problem}", err=True)
    for path, unlisted in report.warnings.items():
        if path not in report.failures:
            for problem in unlisted:
                typer.echo(f"warning: {problem}", err=True)
    listed: set[Problem] = set()  # a problem two packs share (the extends cycle they form) is printed once
    for path, problems in report.failures.items():
        new = [p for p in problems if p not in listed]
        repeated = problem_count(problems) - problem_count(new)
        above = f", {repeated} of them listed above" if repeated else ""
        typer.echo(f"INVALID  {_printable(path)}: {problem_count(problems)} problem(s){above}", err=True)
        for problem in new:
            typer.echo(f"  {problem}", err=True)
        listed.update(new)
    for problem in report.index:
        typer.echo(f"INDEX    {problem}", err=True)
    if not report.ok:
        typer.echo(f"{report.problem_count()} problem(s) found", err=True)
        raise typer.Exit(2)


@app.command()
def new(
    name: str = typer.Argument(..., help="Name of the new pack (lowercase, hyphens)."),
    extends: Optional[str] = typer.Option(None, "--extends", help="Parent pack, e.g. general or general@^1."),
    packs_dir: Path = typer.Option(Path("packs"), "--dir", help="Where to create the pack."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Create a pack skeleton that validates as created."""
    from ..scaffold import new_pack

    root = new_pack(name, packs_dir, extends, registry=registry(packs_path) if extends else None)
    typer.echo(f"created {root}; next: edit {root}/policy.md and pack.yaml, then `pa validate {root}`")


@app.command()
def bump(
    pack_dir: Path = typer.Argument(..., help="The pack's directory (with pack.yaml)."),
    part: Optional[str] = typer.Argument(None, help="major, minor or patch (see packs/README.md for which)."),
    to: Optional[str] = typer.Option(None, "--to", help="An explicit new version instead of PART, e.g. 2.0.0-rc.1."),
    note: Optional[list[str]] = typer.Option(None, "--note", "-m", help="A CHANGELOG line for the new version (repeatable)."),
) -> None:
    """Bump a pack's version and add its CHANGELOG entry, as `pa index` asks after a change."""
    from ..bump import bump_pack
    from ..registry import INDEX_FILE

    result = bump_pack(pack_dir, part, to=to, notes=note or [])
    added = "; CHANGELOG.md entry added" if result.changelog_added else "; CHANGELOG.md already had its entry"
    typer.echo(f"{pack_dir}: {result.old} -> {result.new}{added}")
    for line in result.stranded:
        typer.echo(f"note: {line}", err=True)
    index = "" if not (result.root.parent / INDEX_FILE).is_file() else f", then `pa index --dir {result.root.parent}`"
    typer.echo(f"next: `pa validate {pack_dir}`{index}")


@app.command()
def render(
    pack: str = typer.Argument(..., help="Pack name, name@range, or path."),
    category: Optional[str] = typer.Option(None, "--category", help="Only this category."),
    template: Optional[str] = typer.Option(None, "--template", help="Only this template id."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Instructions requested (default: the pack's count_per_category)."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Print the synthesis prompts exactly as a generator will see them."""
    from ..prompts import synthesis_prompts

    for prompt in synthesis_prompts(load(pack, packs_path), category=category, template=template, n=n):
        typer.echo(f"===== template {prompt.template} · category {prompt.category} =====")
        typer.echo(prompt.text)


@app.command()
def index(
    packs_dir: Path = typer.Option(Path("packs"), "--dir", help="The packs directory to index."),
) -> None:
    """Write packs/INDEX.json (name, version, digest of every pack); parents resolve inside --dir only."""
    from ..errors import PackError
    from ..pack_index import unrecordable, write_index
    from ..registry import INDEX_FILE, Registry
    from ..validation import validate_all

    # Only the directory being indexed: packs in $PA_HOME/packs or PA_PACKS_PATH must not change
    # which parent a pack composes with, or the digests written would depend on the machine.
    report = validate_all(packs_dir, Registry([packs_dir]))
    if report.failures:
        raise PackError(report.distinct_problems())
    refused = unrecordable(packs_dir / INDEX_FILE, report.packs)
    if refused:
        raise PackError(refused)
    data = write_index(packs_dir / INDEX_FILE, report.packs)
    typer.echo(f"wrote {packs_dir / INDEX_FILE} ({len(data['packs'])} packs)")
