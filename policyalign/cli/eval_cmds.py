"""Evaluation commands: `pa eval` (a pack's eval sets, or `--compare A B`) and `pa judge`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from .common import PacksPath, Quiet, print_json


def _split_sets(sets: Optional[str]) -> list[str] | None:
    """--sets as names; None when not given. Given but naming none (`--sets ","`), it is an error: it
    evaluated every set, silently, as if --sets were left out."""
    names = [s.strip() for s in (sets or "").split(",") if s.strip()]
    if sets is not None and not names:
        from ..errors import InvalidInputError

        raise InvalidInputError(f"--sets {sets!r} names no eval set",
                                hint="name sets comma-separated (--sets harmful,benign), or leave --sets out for all")
    return names or None


DEFAULT_JUDGE = "refusal"
DEFAULT_MAX_NEW_TOKENS = 256


def _default_out(pack_folder: str, model: str, adapter: Optional[Path], policy_in_context: bool, *,
                 sets: Optional[list[str]] = None, limit: Optional[int] = None, judge: str = DEFAULT_JUDGE,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, benchmarks: Sequence[str] = (),
                 no_drift: bool = False) -> Path:
    """pa-eval/<pack>-<version>/<model>[-<adapter name>-<hash>][-policy][-<each option given>]:
    distinct evaluations never overwrite each other (`pack` is NAME-VERSION, as in runs/: an eval of
    general@1.1.0 wrote over general@1.0.0's). The adapter name is its run directory's for a run's
    `adapter/` (runs/a/adapter -> `a`), and the hash (of the resolved path) keeps two adapters of
    the same name apart. Each option that changes what is measured and differs from its default
    (`--sets`, `--limit`, `--judge`, `--max-new-tokens`, `--benchmark`, `--no-drift`) is named in
    the folder too: `--limit 8` then the whole eval wrote one folder, the second run's results
    over the first's."""
    slug = _model_slug(model)
    if adapter:
        resolved = Path(adapter).resolve()
        name = resolved.parent.name if resolved.name == "adapter" and resolved.parent.name else resolved.name
        digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
        slug += f"-{name or 'adapter'}-{digest}"
    if policy_in_context:
        slug += "-policy"
    options = [(bool(sets), f"sets-{_slug('+'.join(sorted(set(sets or ()))))}"), (limit is not None, f"limit{limit}"),
               (judge.strip() != DEFAULT_JUDGE, f"judge-{_judge_slug(judge)}"),
               (max_new_tokens != DEFAULT_MAX_NEW_TOKENS, f"tokens{max_new_tokens}"),
               (bool(benchmarks), f"bench-{_slug('+'.join(sorted({b.strip().lower() for b in benchmarks})))}"),
               (no_drift and adapter is not None, "nodrift")]
    slug += "".join(f"-{part}" for given, part in options if given)
    return Path("pa-eval") / pack_folder / slug


def _model_slug(model: str) -> str:
    """The model as one folder-name part: in its one spelling (`models.spelled_name`), a local directory by its
    name plus a hash of its resolved path, as for an adapter. Named as typed, `--model ./m`, `/abs/m` and `m/`
    (or `qwen2.5-7b` and `Qwen2.5-7B`) were several folders for one model, and a stopped evaluation run again
    with the model spelt otherwise did not resume but started over."""
    from ..models import resolve_model, spelled_name

    ref = resolve_model(model)
    if ref.kind != "local":
        return _slug(spelled_name(ref))
    return f"{_slug(Path(ref.location).name)}-{hashlib.sha256(ref.location.encode()).hexdigest()[:8]}"


def _judge_slug(judge: str) -> str:
    """The judge as one folder-name part: its kind and its model as `_model_slug` names a model. Named as
    typed, `llm:./j`, `llm:/abs/j` and `llm:j/` were three folders for one judge."""
    from ..judges import get_judge, judge_model, judge_model_errors, split_judge

    parsed = get_judge(judge)
    model = judge_model(parsed)
    if not model:
        return _slug(parsed.spec)
    with judge_model_errors(judge):
        return f"{split_judge(parsed.spec)[0]}-{_model_slug(model)}"


def _slug(name: str) -> str:
    """A model, judge or set name as one folder-name part (`Org/M` -> `Org--M`, `llm:X` -> `llm-X`)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "-", name.replace("/", "--"))


def _print_json(summary: dict[str, Any], out_dir: Path) -> None:
    """`pa eval --json`: the evaluation as eval.json holds it, one JSON document on stdout for a script
    (`json.loads`, `jq`); where it was written goes to stderr, beside the progress and notes."""
    print_json(summary)
    typer.echo(f"wrote {out_dir}/eval.json, responses.jsonl, report.md, categories.png", err=True)


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    from ..eval_report import rate_with_interval as rate

    overall = summary["metrics"]["overall"]
    typer.echo(f"{summary['pack']['name']}@{summary['pack']['version']} · {summary['model']}"
               f"{' + ' + summary['adapter'] if summary.get('adapter') else ''} · judge {summary['judge']}")
    typer.echo(f"  items {overall['n']}  violation {rate(overall, 'violation_rate')}  "
               f"over-refusal {rate(overall, 'over_refusal_rate')}  refuse/guide agree "
               f"{rate(overall, 'refuse_guide_agreement')}  unparseable {overall['unparseable']}")
    if overall.get("tool_items"):
        items = overall["tool_items"]  # items that name forbidden tools, not every item offering tools
        typer.echo(f"  forbidden tool calls {rate(overall, 'forbidden_tool_call_rate')} of {items} "
                   f"item{'' if items == 1 else 's'} naming forbidden tools")
    if summary.get("drift"):
        typer.echo(f"  drift KL(base||adapted) {summary['drift']['kl']:.4g}")
    typer.echo(f"  wrote {out_dir}/eval.json, responses.jsonl, report.md, categories.png  (95% intervals in brackets)")


def _colour_on_stdout() -> bool:
    """Whether `pa eval --compare` may colour its verdicts: on a terminal, unless NO_COLOR is set (no-color.org).
    In a pipe or a file the table stays plain Markdown (click's echo would strip the colour there as well)."""
    import os
    import sys

    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@app.command("eval")
def eval_command(
    pack: Optional[str] = typer.Argument(None, help="Pack name, name@range, or path (not needed with --compare)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model: tiny, an alias, a Hub id or a directory."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="PEFT adapter directory to evaluate."),
    policy_in_context: bool = typer.Option(False, "--policy-in-context",
                                           help="Put the policy in the system message (the teacher reference)."),
    sets: Optional[str] = typer.Option(None, "--sets", help="Comma-separated eval set names; a parent pack's "
                                       "set as PARENT/SET, e.g. general/harmful (default: the pack's own and its parents')."),
    judge: str = typer.Option(DEFAULT_JUDGE, "--judge", help="refusal | guard:MODEL | llm:MODEL"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default pa-eval/PACK-VERSION/MODEL[-ADAPTER-HASH][-policy], "
                                       "-policy with --policy-in-context, then each of --sets, --limit, --judge, "
                                       "--max-new-tokens, --benchmark and --no-drift given, e.g. tiny-limit8: "
                                       "evaluations with other options never overwrite each other)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N items per eval set."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Generation batch size."),
    max_new_tokens: int = typer.Option(DEFAULT_MAX_NEW_TOKENS, "--max-new-tokens", min=1, help="Longest response generated."),
    benchmark: Optional[list[str]] = typer.Option(None, "--benchmark",
                                                  help="Also run a public benchmark (xstest, strongreject); needs `datasets`."),
    no_drift: bool = typer.Option(False, "--no-drift", help="Skip the drift measurement with --adapter."),
    compare: Optional[tuple[Path, Path]] = typer.Option(None, "--compare", metavar="A B",
                                                       help="Compare two eval.json files (or their directories)."),
    quiet: bool = Quiet,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout: what eval.json holds, "
                                 "or with --compare each rate of A and B, its change and paired p."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Evaluate a model (optionally with an adapter) on a pack's eval sets, or compare two evals.

    Stopped part way (Ctrl-C, a crash), it answers only the missing items when run again (OUT/responses.partial.jsonl)."""
    from ..errors import InvalidInputError

    if compare and compare[0] is not None:
        from ..eval_report import compare as compare_evals

        if str(compare[1]) == "--compare":  # `--compare A --compare B`: B landed in PACK
            raise InvalidInputError("--compare takes both evaluations at once",
                                    hint=f"pa eval --compare {compare[0]} {pack or 'B'}")

        ignored = [flag for flag, value in (("PACK", pack), ("--model", model), ("--adapter", adapter),
                                            ("--policy-in-context", policy_in_context), ("--sets", sets),
                                            ("--out", out), ("--limit", limit), ("--device", device),
                                            ("--benchmark", benchmark), ("--no-drift", no_drift),
                                            ("--judge", judge != DEFAULT_JUDGE),
                                            ("--max-new-tokens", max_new_tokens != DEFAULT_MAX_NEW_TOKENS),
                                            ("--batch-size", batch_size != 16), ("--packs-path", packs_path)) if value]
        if ignored:  # they describe an evaluation to run, and --compare runs none (nor re-judges: --judge too)
            raise InvalidInputError(f"--compare reads two finished evaluations; {', '.join(ignored)} would be ignored",
                                    hint="drop them, or run the evaluation first: pa eval PACK --model M ...")

        if as_json:
            from ..eval_report import comparison

            print_json(comparison(compare[0], compare[1]))
        else:
            typer.echo(compare_evals(compare[0], compare[1], colour=_colour_on_stdout()), nl=False)
        return
    if not pack or not model:
        raise InvalidInputError("`pa eval` needs a PACK and --model (or --compare A B)",
                                hint="e.g. pa eval general --model tiny, or pa eval --compare before/ after/")
    from ..evaluate import adapter_notes, evaluate
    from ..generation import greedy_params
    from .common import load

    loaded_pack = load(pack, packs_path)
    for note in adapter_notes(adapter, loaded_pack, model):
        typer.echo(f"note: {note}", err=True)
    out_dir = out or _default_out(f"{loaded_pack.name}-{loaded_pack.version}", model, adapter, policy_in_context, sets=_split_sets(sets),
                                  limit=limit, judge=judge, max_new_tokens=max_new_tokens,
                                  benchmarks=benchmark or (), no_drift=no_drift)
    result = evaluate(loaded_pack, model, adapter=adapter, policy_in_context=policy_in_context,
                      sets=_split_sets(sets), judge=judge, params=greedy_params(max_new_tokens), out_dir=out_dir,
                      limit=limit, device=device, batch_size=batch_size, benchmarks=benchmark or (),
                      drift=False if no_drift else None, progress=not quiet)
    (_print_json if as_json else _print_summary)(result.summary, result.out_dir)


@app.command("judge")
def judge_command(
    file: Path = typer.Argument(..., help="JSONL of {prompt|messages, response[, category, expect, forbidden_tools, tools, tool_calls]} rows; tool_calls: the response's calls as structured output, judged where its text holds none."),
    judge: str = typer.Option("refusal", "--judge", help="refusal | guard:MODEL | llm:MODEL"),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write judged rows, never FILE itself (default FILE.judged.jsonl)."),
    pack: Optional[str] = typer.Option(None, "--pack", help="Pack whose policy the llm: judge is shown."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (model judges)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Judge batch size (model judges)."),
    packs_path: Optional[list[Path]] = PacksPath,
) -> None:
    """Score any JSONL of responses with a judge; prints label counts and rates.

    Stopped part way (Ctrl-C, a crash), it judges only the rows not judged yet when run again with the same
    judge and --pack (verdicts are kept beside the output: X.partial.jsonl for --out X.jsonl, FILE.judged.partial.jsonl
    by default)."""
    from ..eval_report import rate_with_interval
    from ..judge_file import judge_file

    policy = ""
    if pack and not judge.strip().startswith("llm:"):  # the refusal and guard judges read no policy
        from ..errors import InvalidInputError

        raise InvalidInputError(f"--pack is shown to an llm: judge only; --judge {judge} reads no policy, so it would be "
                                "ignored", hint="drop --pack, or judge with --judge llm:MODEL --pack PACK")
    if pack:
        from .common import load

        policy = load(pack, packs_path).policy
    result = judge_file(file, judge, out=out, policy=policy, device=device, batch_size=batch_size)
    overall = result.metrics["overall"]
    labels = ", ".join(f"{k} {v}" for k, v in overall["labels"].items())
    typer.echo(f"{overall['n']} rows judged with {judge}: {labels}")
    for key, title in (("violation_rate", "violation rate"), ("over_refusal_rate", "over-refusal rate"),
                       ("refuse_guide_agreement", "refuse/guide agreement"),  # computed, and printed by pa eval only
                       ("forbidden_tool_call_rate", "forbidden tool-call rate")):
        if overall[key] is not None:
            typer.echo(f"  {title}: {rate_with_interval(overall, key)} (95% interval in brackets)")
    typer.echo(f"  wrote {result.out_path}")
