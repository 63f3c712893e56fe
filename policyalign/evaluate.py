"""Evaluation: a pack's eval sets -> responses -> verdicts -> metrics, reports and drift.

`evaluate()` generates one response per eval item (greedy by default, batched), judges them
(`judges.get_judge`), and writes into `out_dir`:

* `responses.jsonl` — every item with its response, parsed tool calls and verdict;
* `eval.json` — model, adapter, pack name/version/digest, judge, sampling, counts and metrics
  overall, per eval set and per category, drift when an adapter is given, a timestamp;
* `report.md` — the same numbers as Markdown tables;
* `categories.png` — a bar chart per category.

While it works, `responses.partial.jsonl` (the `Journal`) holds every batch of answers and every
chunk of verdicts, fsynced as they come: an evaluation killed part way and run again answers and
judges only what is missing (drift is measured again), and the journal is deleted once the files
above are written.

What the run is built from: `metrics` (the rates and their definitions), `verdicts` (judging),
`eval_journal` (resuming), `drift`, `benchmarks`, and `eval_report` (the files, report.md, charts
and `compare`). `pa judge` is `judge_file`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .benchmarks import Benchmark, load_benchmark
from .drift import DriftResult, drift_of_loaded
from .errors import InvalidInputError, PolicyAlignError
from .eval_journal import JOURNAL, RESPONSE_FIELDS, Journal, journal_settings
from .eval_report import EvalResult, write_eval
from .judges import public_judge
from .io import output_dir, read_json, sha256_file
from .metrics import compute_metrics, summarize
from .progress import say_resuming
from .verdicts import judge_journaled, judge_weights_fetched

if TYPE_CHECKING:
    from .generation import SamplingParams
    from .pack import Pack
    from .pack_eval import EvalItem, EvalSet

EVAL_SCHEMA = "policyalign.eval/1"


# ---------------------------------------------------------------------------------------------
# Choosing what to evaluate


def resolve_pack(pack: "Pack | str | os.PathLike[str]") -> "Pack":
    """A loaded Pack as is; a name, `name@range` or directory through the registry."""
    if hasattr(pack, "eval_sets"):
        return pack  # type: ignore[return-value]
    from .registry import Registry

    return Registry.default().load(str(pack))


def select_sets(pack: "Pack", names: Sequence[str] | None) -> list["EvalSet"]:
    """The named eval sets in the order given, each once (all the pack evaluates when `names` is empty: its
    own, then its ancestors' as `<ancestor>/<set>`, see `Pack.evaluated_sets`). `--sets harmful,harmful`
    answered and counted every item twice: twice the n, an interval too narrow, `items` doubled."""
    available = {s.name: s for s in pack.evaluated_sets()}
    if not names:
        return list(available.values())
    chosen = []
    for name in dict.fromkeys(names):
        if name not in available:
            from .errors import did_you_mean

            hint = _own_set_hint(pack.name, name, available) or did_you_mean(name, list(available), "this pack's eval sets")
            raise InvalidInputError(f"--sets: pack {pack.name!r} has no eval set {name!r}", hint=hint)
        chosen.append(available[name])
    return chosen


def _own_set_hint(pack_name: str, name: str, available: Mapping[str, object]) -> str | None:
    """The hint for a pack's own set written with the pack's name (`--sets agent-tools/harmful`): only
    ancestors' sets carry a prefix, and the closest spelling suggested was `general/harmful`, another set."""
    own = name.removeprefix(f"{pack_name}/")
    if own == name or own not in available:
        return None
    return f"the pack's own sets are named without its name: --sets {own}"


@dataclass(frozen=True)
class EvalTask:
    """One item to answer, with the set it came from."""

    set_name: str
    kind: str
    item: "EvalItem"
    file: str = ""  # the set's file, relative to the pack (a benchmark's dataset id): errors name it


def check_eval_options(judge: str, limit: int | None, *, limit_flag: str = "--limit",
                       judge_as: str | None = None) -> None:
    """The judge (its spec, and its model: a directory that is not there, a Hub judge neither in the
    cache nor downloadable) and the item limit, checked before any model loads; `pa apply` checks
    them before its first stage, not after synthesis and filtering have run. A model judge was
    loaded only after every answer had been generated, and refused then. `judge_as` names a judge
    given other than as --judge (`judge in FILE`)."""
    judge_weights_fetched(judge, judge_as)
    if limit is not None and limit < 1:
        raise InvalidInputError(f"{limit_flag} must be at least 1, got {limit}",
                                hint=f"pass a positive number of items per set, or omit {limit_flag}")


def _tasks(sets: Sequence["EvalSet"], limit: int | None) -> list[EvalTask]:
    tasks = []
    for eval_set in sets:
        items = _spread(list(eval_set.items), limit) if limit else list(eval_set.items)
        tasks += [EvalTask(eval_set.name, eval_set.kind, item, eval_set.file) for item in items]
    return tasks


def _spread(items: list["EvalItem"], limit: int) -> list["EvalItem"]:
    """The first `limit` items taken round-robin over categories (file order within each), so a
    quick `--limit` run still touches every category instead of only the first one."""
    by_category: dict[str, list["EvalItem"]] = {}
    for item in items:
        by_category.setdefault(item.category, []).append(item)
    queues = list(by_category.values())
    chosen: list["EvalItem"] = []
    depth = 0
    while len(chosen) < min(limit, len(items)):
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    order = {id(item): k for k, item in enumerate(items)}
    return sorted(chosen, key=lambda item: order[id(item)])


def _conversation(item: "EvalItem", policy: str, policy_in_context: bool) -> dict[str, Any]:
    """What the model is shown: the item as is (student) or with the policy as system (teacher)."""
    from . import chat
    from .frozen import thaw

    messages = thaw(item.messages)
    shown = chat.teacher_messages(policy, messages) if policy_in_context else chat.student_messages(messages)
    conversation: dict[str, Any] = {"messages": list(shown), "id": item.id}
    if item.tools:
        conversation["tools"] = thaw(item.tools)
    return conversation


# ---------------------------------------------------------------------------------------------
# Evaluate


def _task_file(pack: "Pack", task: EvalTask) -> str:
    """Where a task's item lives, for errors: the pack's eval file, or the benchmark's dataset id."""
    path = Path(pack.root) / task.file
    return str(path) if task.file and path.is_file() else task.file


@dataclass
class _Generated:
    """What the model produced for an evaluation: answered rows, drift, the model as eval.json
    records it, and the journal the judge continues."""

    rows: list[dict[str, Any]]
    drift: DriftResult | None
    model_info: dict[str, Any]
    journal: "Journal"


def _generate(tasks: Sequence[EvalTask], pack: "Pack", model_name: str, *, adapter: str | None, adapter_hash: str | None,
              policy_in_context: bool, params: "SamplingParams", device: str | None, batch_size: int, progress: bool,
              with_drift: bool, out_dir: Path) -> _Generated:
    """Load the model once, answer every task the journal has no answer for, measure drift on the
    same weights, free the model."""
    from .generation import get_backend, request_seed
    from .models import load_model, loaded_commit, weights_key

    loaded = load_model(model_name, device=device, adapter=adapter)
    conversations = [{**_conversation(t.item, pack.policy, policy_in_context), "file": _task_file(pack, t)}
                     for t in tasks]
    settings = journal_settings(loaded, adapter, adapter_hash, policy_in_context, params, pack)
    journal = Journal.open(Path(out_dir) / JOURNAL, settings)
    shown = [_shown_key(task, conv) for task, conv in zip(tasks, conversations)]
    pending = [k for k, key in enumerate(shown) if key not in journal.responses]
    if len(pending) < len(tasks):
        say_resuming(len(tasks) - len(pending), len(tasks), "responses", journal.path)

    def keep(batch: list[int], gens: list[Any]) -> None:
        journal.add_responses([(tasks[pending[i]], shown[pending[i]], gen) for i, gen in zip(batch, gens)])

    if pending:  # seeds by position in the whole evaluation: a resumed sample is the one it would have been
        get_backend("transformers", loaded).generate(
            [conversations[k] for k in pending], params, batch_size=batch_size, progress=progress,
            seeds=[request_seed(params.seed, k) for k in pending], on_batch=keep)
    rows = [_answered_row(task, conv, journal.responses[key]) for task, conv, key in zip(tasks, conversations, shown)]
    drift = drift_of_loaded(loaded, batch_size=batch_size) if with_drift else None
    ref = getattr(loaded, "ref", None)
    public = ref.public() if ref is not None else None  # eval.json is published with the adapter: no local paths
    commit = loaded_commit(loaded) if ref is not None else None  # the weights measured, past a moved `main`
    # a local directory's weights by their files' fingerprint: eval.json names it by its directory's name
    # alone, so two models saved as `m` in two places were "measured alike" (`eval_report._measured_models`)
    files = weights_key(ref) if ref is not None and ref.kind == "local" else None
    model_info = {"name": public.name if public is not None and public.kind == "local" else model_name,
                  "resolved": _ref_dict(public), **({"commit": commit} if commit else {}),
                  **({"files": files} if files else {}),
                  "device": str(getattr(loaded, "device", "")), "dtype": str(getattr(loaded, "dtype", ""))}
    del loaded
    gc.collect()
    return _Generated(rows, drift, model_info, journal)


def _answered_row(task: EvalTask, conversation: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """A responses.jsonl row before judging: the item as the pack has it now, and its answer."""
    from .frozen import thaw

    item = task.item
    return {"set": task.set_name, "kind": task.kind, "id": item.id, "category": item.category,
            "expect": item.expect, "messages": thaw(item.messages),
            **({"tools": conversation["tools"]} if item.tools else {}),
            "forbidden_tools": list(item.forbidden_tools),
            **{name: answer[name] for name in RESPONSE_FIELDS}}


def _shown_key(task: EvalTask, conversation: Mapping[str, Any]) -> str:
    """An item's set and id and what the model was shown: an edited item is answered again."""
    from .run import fingerprint

    return fingerprint({"set": task.set_name, "id": task.item.id, "messages": conversation["messages"],
                        "tools": conversation.get("tools")})


def _ref_dict(ref: Any) -> dict[str, Any] | None:
    if ref is None:
        return None
    if dataclasses.is_dataclass(ref):
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(ref).items()}
    return {"repr": repr(ref)}


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def recorded_adapter(adapter: str | None, out_dir: str | os.PathLike[str]) -> str | None:
    """The adapter as eval.json names it. An eval written to RUN_DIR/eval/NAME (the run's stages, or
    `pa eval --out RUN_DIR/eval/after`) names an adapter inside RUN_DIR relative to it (`adapter`):
    that eval.json is published with the adapter, and an absolute path would show the user's home
    directory on the Hub. Any other adapter keeps the path it was given."""
    out = Path(out_dir).resolve()
    if not adapter or out.parent.name != "eval":
        return adapter
    run_dir, resolved = out.parent.parent, Path(adapter).resolve()
    return resolved.relative_to(run_dir).as_posix() if resolved.is_relative_to(run_dir) else adapter


def adapter_notes(adapter: str | os.PathLike[str] | None, pack: "Pack", model: str) -> list[str]:
    """What `pa eval --adapter` notes before it measures: the other pack (`trained_elsewhere`) and the other base
    model (`trained_on_another_base`) the adapter's policyalign.json says it was trained on. The file is read
    and parsed once here for both (each read it again), and one that cannot be read is named once."""
    from .card import PROVENANCE_FILE

    path = Path(adapter) / PROVENANCE_FILE if adapter else None
    if path is None or not path.is_file():
        return []
    try:
        recorded = read_json(path)
    except (OSError, PolicyAlignError) as error:  # the adapter loads without it: nothing else would say so
        return [f"{path} cannot be read ({error}), so which pack the adapter was trained on is unknown"]
    notes = (trained_elsewhere(recorded, path, pack), trained_on_another_base(recorded, model))
    return [note for note in notes if note]


def trained_elsewhere(recorded: Any, path: Path, pack: "Pack") -> str | None:
    """Which other pack (version, content) `recorded`, the adapter's parsed policyalign.json at `path`, says it
    was trained on, or None.

    Measuring an adapter trained on mypol@1.1.0 against mypol@1.0.0's sets and policy is allowed (how does
    the new adapter do on the old rules?) but was silent: the report reads as that of a mypol@1.0.0 adapter."""
    trained = recorded.get("pack") if isinstance(recorded, dict) else None
    if not isinstance(trained, dict):
        return f"{path} records no pack, so which pack the adapter was trained on is unknown"
    if trained.get("digest") in (None, pack.digest):
        return None
    ref = f"{trained.get('name')}@{trained.get('version')}"
    fix = ("the pack changed since, without a version bump" if ref == pack.ref
           else f"`pa eval {ref}` measures it on the policy it learned")
    return (f"the adapter was trained on {ref} (digest {str(trained.get('digest'))[:12]}), this evaluates it on "
            f"{pack.ref} (digest {pack.digest[:12]}): {fix}")


def trained_on_another_base(recorded: Any, model: str) -> str | None:
    """Which other base model `recorded`, the adapter's parsed policyalign.json, says it was trained on, or None.

    Only a Hub base at another commit was refused (`models._check_adapter_base`): a pulled `tiny` adapter
    on a local model, or an Instruct model's adapter on its base model (the same shapes, so it loads),
    evaluated without a word, and the report read as the adapter's. A record that holds no base says
    nothing here (`trained_elsewhere`, or `adapter_notes` for a file that cannot be read, names it); a model
    that cannot be resolved is `evaluate`'s to report."""
    from .card import PROVENANCE_FILE
    from .models import resolve_model

    base = recorded.get("base_model") if isinstance(recorded, dict) else None
    trained_id = base.get("id") if isinstance(base, dict) else None
    if not isinstance(trained_id, str) or not trained_id:
        return None
    try:
        given = resolve_model(model).public()
    except (OSError, PolicyAlignError):
        return None
    kind = base.get("kind")
    if trained_id.lower() == given.location.lower() and kind in (None, given.kind):
        return None
    if kind == "local":
        trained, fix = f"a local model directory named {trained_id}", f"--model PATH/TO/{trained_id}"
    else:
        pin = base.get("commit") or base.get("revision") if kind == "hub" else None
        trained, fix = f"base model {trained_id}", f"--model {trained_id}@{pin}" if isinstance(pin, str) and pin \
            else f"--model {trained_id}"
    return (f"the adapter was trained on {trained} ({PROVENANCE_FILE}), this evaluates it on {given.location}: "
            f"`{fix}` measures it on the base it was trained on")


def adapter_sha256(adapter: str | os.PathLike[str] | None) -> str | None:
    """sha256 of a local PEFT adapter's weights file (safetensors preferred), None when there is
    none: eval.json records it so an after-eval can be tied to the exact weights it measured."""
    if not adapter:
        return None
    for name in ADAPTER_WEIGHTS:
        path = Path(adapter) / name
        if path.is_file():
            return sha256_file(path)
    return None


def evaluate(
    pack: "Pack | str | os.PathLike[str]",
    model_name: str,
    *,
    adapter: str | os.PathLike[str] | None = None,
    policy_in_context: bool = False,
    sets: Sequence[str] | None = None,
    judge: str = "refusal",
    params: "SamplingParams | None" = None,
    out_dir: str | os.PathLike[str],
    limit: int | None = None,
    device: str | None = None,
    batch_size: int = 16,
    benchmarks: Sequence[str] = (),
    benchmark_revision: str = "main",
    drift: bool | None = None,
    progress: bool = False,
) -> EvalResult:
    """Answer the pack's eval sets with `model_name` (+ `adapter`), judge, and write eval.json,
    responses.jsonl, report.md and categories.png into `out_dir`. `policy_in_context` shows the
    policy as the system message (the teacher: the reference the adapter is distilled towards).
    Drift is measured by default when an adapter is given (`drift=False` skips it)."""
    pack = resolve_pack(pack)
    check_eval_options(judge, limit)
    chosen = select_sets(pack, sets)  # before the folder exists: a misspelt set leaves nothing behind
    check_eval_out(Path(out_dir))
    from .generation import greedy_params
    from .run import EVAL_DIR_BUSY, run_lock, versions

    with _removed_if_left_empty(Path(out_dir)), run_lock(Path(out_dir), EVAL_DIR_BUSY):
        # one process per eval folder: another's answers must not enter this one's journal
        # each once, however spelt (`xstest`, `XSTest`): a benchmark named twice was answered and counted
        # twice (twice the n, an interval too narrow, each paired item counted twice), as `--sets` once was
        loaded_benchmarks = [load_benchmark(name, revision=benchmark_revision)
                             for name in dict.fromkeys(name.strip().lower() for name in benchmarks)]
        tasks = _tasks([*chosen, *(b.eval_set for b in loaded_benchmarks)], limit)
        params = params or greedy_params()
        adapter_str = str(adapter) if adapter else None
        with_drift = bool(adapter_str) if drift is None else drift
        if adapter_str:
            from .models import check_adapter_dir

            check_adapter_dir(Path(adapter_str))
        adapter_hash = adapter_sha256(adapter_str)  # before loading: the weights this eval measures
        generated = _generate(
            tasks, pack, model_name, adapter=adapter_str, adapter_hash=adapter_hash, policy_in_context=policy_in_context,
            params=params, device=device, batch_size=batch_size, progress=progress, with_drift=with_drift,
            out_dir=Path(out_dir))
        model_info, drift_result = generated.model_info, generated.drift
        rows = judge_journaled(generated.rows, judge, generated.journal, policy=pack.policy, device=device,
                                batch_size=min(batch_size, 8))
        summary = {
            "schema": EVAL_SCHEMA,
            "model": model_info["name"],
            "model_info": model_info,
            "adapter": recorded_adapter(adapter_str, out_dir),
            "adapter_sha256": adapter_hash,
            "policy_in_context": policy_in_context,
            "pack": {"name": pack.name, "version": pack.version, "digest": pack.digest},
            "judge": public_judge(judge),  # published with the adapter: no local paths
            # which weights a model judge had (a Hub commit, a local directory's files' fingerprint; None
            # for `refusal`): `llm:./judge` retrained in place judged otherwise under the same spec
            "judge_weights": judge_weights_fetched(judge).get("judge_files"),
            # the rules the judge's verdicts come from (`judges.judge_rules`: the refusal detector's, and an `llm:`
            # judge's prompt): they change with the code, while `versions` names policyalign's version only
            "judge_rules": judge_weights_fetched(judge).get("judge_rules"),
            "sampling": dataclasses.asdict(params),
            # items: how many were evaluated (after --limit); items_in_set: how many the set holds
            "sets": [set_entry(s, sum(t.set_name == s.name for t in tasks)) for s in chosen],
            "benchmarks": [benchmark_entry(b, sum(t.set_name == b.eval_set.name for t in tasks))
                           for b in loaded_benchmarks],
            "limit": limit,
            "limit_rule": "round-robin over categories, per set" if limit else None,
            "counts": compute_metrics(rows)["labels"] | {"items": len(rows)},
            "metrics": summarize(rows),
            "drift": drift_result.to_dict() if drift_result else None,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }
        summary["timestamp"] = earlier_timestamp(Path(out_dir) / "eval.json", summary) or summary["timestamp"]
        result = write_eval(out_dir, summary, rows)
        generated.journal.path.unlink(missing_ok=True)  # everything it held is in responses.jsonl now
        return result


def earlier_timestamp(path: Path, summary: Mapping[str, Any]) -> str | None:
    """The timestamp of the eval.json at `path` when it records this very evaluation (all else equal),
    else None. An evaluation run again with the same results rewrote eval.json with only a new time:
    the model card lists its sha256, so the card changed too, and `pa push` (or `pa apply --push-to`)
    of a run already published refused on its tag and advised publishing the same results again
    under another one."""
    try:
        earlier = read_json(path) if path.is_file() else None
    except (OSError, PolicyAlignError):  # unreadable: written over, as before
        return None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("timestamp"), str):
        return None
    same = json.loads(json.dumps({**summary, "timestamp": earlier["timestamp"]}))
    return earlier["timestamp"] if same == earlier else None


def set_entry(eval_set: "EvalSet", evaluated: int) -> dict[str, Any]:
    """eval.json's record of one set: `items` evaluated (after --limit), `items_in_set` the set holds;
    an inherited set also names the pack it came from and the items left out as no longer fitting."""
    entry: dict[str, Any] = {"name": eval_set.name, "kind": eval_set.kind, "items": evaluated,
                             "items_in_set": len(eval_set.items)}
    if eval_set.origin:
        entry |= {"from": eval_set.origin, "dropped": dict(eval_set.dropped)}
    return entry


def benchmark_entry(benchmark: Benchmark, evaluated: int) -> dict[str, Any]:
    """eval.json's record of one benchmark, its counts as a set's (`set_entry`): `items` evaluated (after
    --limit), `items_in_set` the dataset holds. Its `items` was the dataset's size, so `--limit 2` on
    xstest's 450 prompts recorded 450, and report.md's limit line, listing the pack's sets only, never
    said that 2 of them were answered."""
    return {**benchmark.meta, "items": evaluated}


# What an evaluation writes beside its eval.json.
EVAL_FILES = ("responses.jsonl", "report.md", "categories.png")


def check_eval_out(out_dir: Path) -> None:
    """Refuse an output folder holding a file an evaluation writes but no evaluation (no eval.json, no
    journal of one stopped part way): `--out ""` (an unset shell variable) or `--out .` wrote report.md
    and responses.jsonl over the current directory's own, after minutes of generating. An earlier
    evaluation's folder is written over, as running the same `pa eval` again does."""
    if not out_dir.is_dir() or (out_dir / "eval.json").is_file() or (out_dir / JOURNAL).is_file():
        return
    taken = [name for name in EVAL_FILES if (out_dir / name).exists()]
    if taken:
        raise InvalidInputError(f"--out {out_dir} holds {', '.join(taken)} but no evaluation (no eval.json): "
                                "this one would write over them", file=str(out_dir),
                                hint="give --out a new or empty directory, or the folder of an earlier evaluation")


@contextmanager
def _removed_if_left_empty(out_dir: Path) -> Iterator[None]:
    """Create `out_dir`, and remove it again if this evaluation fails before writing anything but its
    lock (a model not in the cache, a benchmark not found): `pa eval` left such folders behind, and a
    later `pa eval --compare pa-eval/*/...` glob picked them up as evaluations."""
    from .run import LOCK_FILE

    existed = out_dir.exists()
    # the folders above it this call creates (`pa-eval/general-1.0.0/`): left behind empty after a failure too
    created = [folder for folder in out_dir.absolute().parents if not folder.exists()]
    output_dir(out_dir)
    try:
        yield
    except BaseException:
        if not existed and {p.name for p in out_dir.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(out_dir, ignore_errors=True)
            for folder in created:  # deepest first; one another process has filled since stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
