"""Each pipeline stage as one call on a run directory: resolve its inputs, run it, record it.

The stage commands (`pa synthesize`, `pa filter`, `pa distill`, `pa eval`) and `pa apply` both go
through here, so a stage run by hand and the same stage inside `pa apply` leave the same files
and the same `run.json` entry. Each stage's `key` fingerprints what it depends on (upstream
file hashes and its options): `pa apply` skips a stage whose recorded key is unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .distill_settings import RUN_ONLY_SETTINGS
from .errors import InvalidInputError, RunError
from .io import output_dir, read_json, sha256_file
from .judges import keyed_judge
from .models import check_device_and_dtype
from .run import (MANIFEST, check_run_directory, check_same_run, fingerprint, load_run_pack, read_manifest,
                  record_inputs, rekey_stage, run_active, run_held, run_inputs, stage)
from .runs import adapter_hash

if TYPE_CHECKING:
    from .distill import DistillResult
    from .filtering import FilterResult
    from .pack import Pack


def _file_hash(run_dir: Path, name: str) -> str | None:
    path = Path(run_dir) / name
    return sha256_file(path) if path.is_file() else None


def outdated_stage(run_dir: Path, stages: dict[str, Any]) -> str | None:
    """The first finished stage whose inputs changed after it ran, or None. `pa filter` re-run by hand on a
    finished run (`--top-k 10`) selected anew, and `pa runs` called the run complete beside the numbers of
    the adapter trained on the old selection. Each stage's record names the files it was made from (by
    sha256), which are compared with the files there now; a record from before they were named is not."""
    def entry(name: str) -> dict[str, Any]:
        value = stages.get(name)
        return value if isinstance(value, dict) else {}

    settings, card = entry("distill").get("settings"), entry("card").get("made_from")
    recorded = {"filter": {"instructions": entry("filter").get("instructions")},
                "distill": {k: settings.get(k) for k in ("selected", "heldout")} if isinstance(settings, dict) else {},
                "eval_after": {"adapter": entry("eval_after").get("adapter")},
                "card": card if isinstance(card, dict) else {}}
    now = {"instructions": lambda: _file_hash(run_dir, "instructions.jsonl"),
           "selected": lambda: _file_hash(run_dir, "selected.jsonl"),
           "heldout": lambda: _file_hash(run_dir, "heldout.jsonl"), **_card_inputs(run_dir)}
    for name, made_from in recorded.items():
        if any(key in now and value is not None and value != now[key]() for key, value in made_from.items()):
            return name
    return None


def _card_inputs(run_dir: Path) -> dict[str, Callable[[], str | None]]:
    """The files the card reports, each hashed when asked (`pa runs` asks only of a finished run)."""
    return {"adapter": lambda: adapter_hash(run_dir),
            "provenance": lambda: _file_hash(run_dir, "adapter/policyalign.json"),
            "before": lambda: _file_hash(run_dir, "eval/before/eval.json"),
            "after": lambda: _file_hash(run_dir, "eval/after/eval.json")}


def _model(run_dir: Path, model: str | None) -> str:
    """--model, else the run's. run.json names a local directory by its absolute path: once the directory
    moved, a stage command without --model said "model directory not found" and told the user to check the
    path or use a Hub id, not that `--model NEW_PATH` goes on with the run (`run.same_model`)."""
    if model:
        return model
    recorded = run_inputs(run_dir)["model"]
    if Path(recorded).is_absolute() and not Path(recorded).exists():
        raise RunError(f"this run's model directory {recorded} is not there", file=str(Path(run_dir) / MANIFEST),
                       where="inputs.model", hint="if it moved, pass --model NEW_PATH: the directory with the same "
                                                  "files is the run's model, and its finished stages are kept")
    return recorded


def _pack_and_model(run_dir: Path, pack: "str | Pack | None", model: str | None,
                    packs_path: list[Path] | None = None) -> "tuple[Pack, str]":
    """The run's pack and model, or those given with --pack / --model, which may name another version
    or copy of the run's pack but not another pack or model: a stage run with those would score or
    train on the recorded run's files and leave a run.json naming what it did not use."""
    the_pack, model = load_run_pack(run_dir, pack, packs_path), _model(run_dir, model)
    check_same_run(run_dir, read_manifest(run_dir), the_pack.name, model,
                   hint="drop --pack and --model to use the run's, or start another run directory "
                        "(pa synthesize PACK --model M --out DIR)")
    return the_pack, model


def _check_upstream(run_dir: Path, upstream: str, made_from: dict[str, Any], files: str, command: str) -> None:
    """Refuse to work on `files` unless the run's `upstream` stage finished, from what is there now.

    run.json records the run's pack as a stage command (or `pa apply`) starts, so the pack-changed
    check (`run.load_run_pack`) holds only while every stage finishes: after an eval item was added
    and the re-synthesis failed, `pa filter` scored instructions never decontaminated against it;
    after a re-synthesis without a re-filter, `pa distill` trained on the old selection. Each entry in
    `made_from` (what the upstream stage recorded it was made from) must match; an entry of a run made
    before they were recorded is not checked. A stage running in another process is left to the lock.
    """
    entry = read_manifest(run_dir)["stages"].get(upstream)
    if not isinstance(entry, dict) or run_active(run_dir):
        return
    where, hint = str(Path(run_dir) / MANIFEST), f"re-run {command} on this run directory first, or `pa apply`"
    if entry.get("status") != "done":
        # "running" with no process holding the run is a stage killed part way: `pa runs` says interrupted
        status = "interrupted" if entry.get("status") == "running" else entry.get("status")
        raise RunError(f"this run's last {upstream} stage did not finish (it is recorded as {status}), "
                       f"so {files} is not its output (missing, or an earlier attempt's)", file=where, hint=hint)
    stale = [name for name, value in made_from.items() if name in entry and entry[name] != value]
    if stale:
        raise RunError(f"{files} was made by {upstream} from another {' and '.join(stale)} than this run's now",
                       file=where, hint=hint)


def _made_from(run_dir: Path, name: str, **made_from: Any) -> bool:
    """Whether stage `name` finished, recording each of `made_from` as it is now."""
    entry = read_manifest(run_dir)["stages"].get(name)
    return isinstance(entry, dict) and entry.get("status") == "done" and all(
        entry.get(key) == value for key, value in made_from.items())


def _model_key(model: str, field: str | None = "model", files: str | None = "model_files") -> dict[str, str]:
    """A model as stage keys hold it: `{field: name}` (`models.keyed_name`) and `{files: ...}`
    (`models.weights_key`), the fingerprint of a local directory's files or the commit a Hub model
    loads from: new weights saved into the same directory, or a new commit on the Hub, change the
    keys and re-run the stages on them, while keys of `tiny` stay what they were."""
    from .models import keyed_name, resolve_model, weights_key

    ref = resolve_model(model)
    weights = weights_key(ref) if files else None
    return {**({field: keyed_name(ref)} if field else {}), **({files: weights} if weights else {})}


# --------------------------------------------------------------------------- synthesize


def check_models(*models: tuple[str | None, str], fetch: bool = True) -> None:
    """Each model named (the model, the generator) resolves, and with `fetch` a Hub model is in the cache or
    downloadable (`fetch_hub_files`, as the judge is checked), before the run directory is made: a mistyped
    `--model ./mdoel`, or a Hub model missing offline, left a run directory holding only run.json, which `pa runs`
    listed as an empty or failed run. A stage fetches only what it loads (`pa synthesize --generator G` does not
    load --model). Each comes with where it was given (`--generator`, `generator in FILE`), for its error to name."""
    from .models import fetch_hub_files, named_model_errors, resolve_model

    for name, given_as in models:
        if name is not None:
            with named_model_errors(given_as):
                ref = resolve_model(name)
                if fetch:
                    fetch_hub_files(ref)


def synthesize_options(model: str, generator: str | None, n: int | None, rounds: int | None, seed: int,
                       max_per_category: int | None, max_new_tokens: int | None,
                       backend: str = "transformers") -> dict[str, Any]:
    """The options that change synthesis output (and so its key). The backend samples its own way (vLLM's
    sampler draws other tokens from the same seed), so `--backend vllm` after a transformers run re-synthesizes
    rather than keeping the other backend's instructions; keyed only when not the default, so runs made
    before keep their key."""
    from .generation import backend_name

    key = backend_name(backend)
    return {"generator": generator or model, "n": n, "rounds": rounds, "seed": seed,
            "max_per_category": max_per_category, "max_new_tokens": max_new_tokens,
            **({"backend": key} if key != "transformers" else {})}


def synthesize_key(pack: "Pack", model: str, options: dict[str, Any]) -> str:
    return fingerprint({"pack": pack.digest, **_unset_if_pack_default(pack, options), **_model_key(model, files=None),
                        **_model_key(options["generator"], "generator", "generator_files"), **inherited_sets(pack)})


def _unset_if_pack_default(pack: "Pack", options: dict[str, Any]) -> dict[str, Any]:
    """The options keyed as left out (None) where they give the pack's own value, which synthesizes the same
    instructions: `rounds: 1` (or `n:` the pack's count_per_category) in `pa apply --config` re-ran synthesis
    of a run made without it. Left-out options keep their key, so existing runs keep theirs."""
    from .synthesize import check_settings

    n, rounds, sampling = check_settings(pack, n_per_category=None, rounds=None, batch_size=1, max_per_category=None,
                                         sampling=None, seed=0)
    defaults = {"n": n, "rounds": rounds, "max_new_tokens": sampling.get("max_new_tokens")}
    return {k: None if k in defaults and v is not None and v == defaults[k] else v for k, v in options.items()}


def inherited_sets(pack: "Pack") -> dict[str, Any]:
    """The ancestors' eval sets a child pack is evaluated on, and so decontaminated against, for the
    synthesize and eval keys: runs made when a child ran only its own sets must not keep
    instructions never checked against its parents' eval items, or evals without those sets.
    Empty for a pack without parents, whose keys stay as they were."""
    names = [s.name for s in pack.evaluated_sets() if s.origin]
    return {"inherited_sets": names} if names else {}


def run_synthesize(run_dir: Path, pack: "Pack", model: str, *, generator: str | None = None, n: int | None = None,
                   rounds: int | None = None, seed: int = 0, device: str | None = None, batch_size: int = 16,
                   backend: str = "transformers", max_per_category: int | None = None,
                   max_new_tokens: int | None = None, progress: bool = True) -> Any:
    from .synthesize import check_settings, synthesize

    sampling = {"max_new_tokens": max_new_tokens} if max_new_tokens is not None else None
    check_settings(pack, n_per_category=n, rounds=rounds, batch_size=batch_size, max_per_category=max_per_category,
                   sampling=sampling, seed=seed)  # before the run directory is made or its record changed
    check_device_and_dtype(device)
    check_models((model, "--model"), fetch=generator is None)  # synthesis loads the generator when there is one
    check_models((generator, "--generator"))
    # An unknown --backend made an empty run directory, and `--backend vllm` without vLLM installed (known only
    # when the generator loaded) marked a finished run's synthesis "failed" or left a run of nothing.
    options = synthesize_options(model, generator, n, rounds, seed, max_per_category, max_new_tokens, backend)
    if options.get("backend") == "vllm":
        from .generation import require_vllm

        require_vllm()
    run_dir = output_dir(run_dir)
    with run_held(run_dir):  # from the first write to run.json
        check_run_directory(run_dir)
        record_inputs(run_dir, pack, model)
        with stage(run_dir, "synthesize", lambda: synthesize_key(pack, model, options), options=options,
                   pack=pack.digest) as results:
            result = synthesize(pack, generator or model, out_dir=run_dir, n_per_category=n, rounds=rounds, seed=seed,
                                max_per_category=max_per_category, batch_size=batch_size, device=device,
                                backend=backend, sampling=sampling, progress=progress)
            results["instructions"] = result.summary["instructions"]
    return result


# --------------------------------------------------------------------------- filter


SELECTION_FLAGS = {"keep": "--keep", "top_n": "--top-k", "min_score": "--min-score", "no_filter": "--no-filter"}


def selection_given(value: Any) -> bool:
    """Whether a selection flag was given: `--min-score 0` is (0.0 == False, so `not in (None, False)` says no)."""
    return value is not None and value is not False


def check_one_selection_rule(options: dict[str, Any]) -> None:
    """Each selection flag is a whole rule: given together, all but one would be dropped without a word."""
    given = [flag for name, flag in SELECTION_FLAGS.items() if selection_given(options.get(name))]
    if len(given) > 1:
        raise InvalidInputError(f"{' and '.join(given)} are different selection rules; only one can apply",
                                hint="keep one of --keep, --top-k, --min-score and --no-filter")


def filter_config(pack: "Pack", **options: Any) -> Any:
    from .filtering import FilterConfig

    check_one_selection_rule(options)
    keep = options.pop("keep", None)
    # the pack's filter_keep is the default rule only: with --no-filter, run.json recorded a `keep` never applied
    if keep is None and not any(selection_given(options.get(name)) for name in ("top_n", "min_score", "no_filter")):
        keep = float(pack.training.get("filter_keep", 0.5))
    if options.get("max_new_tokens") is None:
        options["max_new_tokens"] = int(pack.training.get("max_new_tokens", 128))
    if options.get("kl_top_k") is None:  # the reverse KL distillation minimises is the one filtering ranks by
        options["kl_top_k"] = int(pack.training.get("top_k", 256))
    if options.get("temperature") is None:  # ... over responses sampled as distillation's rollouts are
        options["temperature"] = float(pack.training.get("temperature", 1.0))
    else:  # held to the bounds `pa distill --temperature` is, named as that flag: the rollouts it stands for
        from .distill_settings import check_settings

        check_settings({"temperature": options["temperature"]}, from_command_line=True)
    return FilterConfig(keep=keep, **{k: v for k, v in options.items() if v is not None})


def _filter_inputs(run_dir: Path, pack: "Pack", model: str, backend: str) -> dict[str, Any]:
    """The scores depend on the policy (the pack) and the sampler (the backend) as well as the instructions:
    an edited policy leaves the synthesized instructions unchanged, and must still re-score them."""
    return {"instructions": _file_hash(run_dir, "instructions.jsonl"), "pack": pack.digest, **_model_key(model),
            "backend": backend}


# Filter settings the scores do not depend on: the selection and the held-out split come after
# scoring, and every response is sampled from its own seed whatever the batch size.
NOT_SCORED = ("keep", "top_n", "min_score", "no_filter", "heldout", "batch_size")


def filter_keys(run_dir: Path, pack: "Pack", model: str, config: Any, backend: str) -> dict[str, str]:
    """The filter stage's `key` and its `score_key` (the key without the settings in NOT_SCORED, under
    which scores can be reused), from one hash of its inputs: instructions.jsonl may be large."""
    inputs, settings = _filter_inputs(run_dir, pack, model, backend), asdict(config)
    scoring = {k: v for k, v in settings.items() if k not in NOT_SCORED}
    return {"key": fingerprint({**inputs, **settings}), "score_key": fingerprint({**inputs, **scoring})}


def filter_key(run_dir: Path, pack: "Pack", model: str, config: Any, backend: str) -> str:
    return filter_keys(run_dir, pack, model, config, backend)["key"]


def run_filter(run_dir: Path, *, model: str | None = None, pack: "str | Pack | None" = None,
               packs_path: list[Path] | None = None, device: str | None = None, backend: str = "transformers",
               progress: bool = True, **options: Any) -> "FilterResult":
    from .filtering import filter_run, result_dict
    from .models import load_model

    run_dir = Path(run_dir)
    the_pack, model = _pack_and_model(run_dir, pack, model, packs_path)
    instructions = _file_hash(run_dir, "instructions.jsonl")
    # --pack may name another version of the run's pack on purpose (and a filter of these instructions
    # with it, done, chose it); the run's own must otherwise be the one synthesized for.
    chosen = isinstance(pack, str) or _made_from(run_dir, "filter", pack=the_pack.digest, instructions=instructions)
    _check_upstream(run_dir, "synthesize", {} if chosen else {"pack": the_pack.digest},
                    "instructions.jsonl", "`pa synthesize`")
    config = filter_config(the_pack, **options)
    check_device_and_dtype(device)
    keys = filter_keys(run_dir, the_pack, model, config, backend)
    # The stage records `keys["key"]` when done: the key of the model as loaded, as rekeyed below.
    with stage(run_dir, "filter", lambda: keys["key"], score_key=keys["score_key"],
               instructions=instructions, pack=the_pack.digest) as results:
        # The pack and model the selection is made from, which the next stage command then takes: `--pack OTHER`
        # or a moved model's `--model NEW_PATH` given once, not again at every stage command after it.
        record_inputs(run_dir, the_pack, model)
        loaded = load_model(model, device=device)
        keys.update(filter_keys(run_dir, the_pack, model, config, backend))  # a Hub model's commit, once downloaded
        rekey_stage(run_dir, "filter", **keys)
        # Scores are reused by what each was made under (`filtering.score_instructions`), whatever the run records.
        result = filter_run(run_dir, loaded, the_pack.policy, config, backend=backend, progress=progress,
                            scores_key=keys["score_key"])
        results.update(result_dict(result, config))
    return result


# --------------------------------------------------------------------------- distill


def distill_config(pack: "Pack", overrides: dict[str, Any]) -> Any:
    from .distill_settings import DistillConfig

    return DistillConfig.from_pack(pack.training, **overrides)


# What may change between a checkpoint and the run that continues it: the length, the bookkeeping
# and the speed switches. Everything else is what the checkpoint was trained on.
# The length: changed, training goes on from the checkpoint (or starts over).
LENGTH = ("max_steps", "num_epochs")
RESUMABLE_CHANGES = (*LENGTH, *RUN_ONLY_SETTINGS)


def _distill_inputs(run_dir: Path, pack: "Pack", model: str, config: Any) -> dict[str, Any]:
    """The pack is the teacher's policy and what the adapter's provenance names: any change retrains."""
    inputs = {"selected": _file_hash(run_dir, "selected.jsonl"), "heldout": _file_hash(run_dir, "heldout.jsonl"),
              "pack": pack.digest, **_model_key(model), **asdict(config)}
    return json.loads(json.dumps(inputs, default=str))  # as run.json will hold it (tuples as lists)


def distill_key(run_dir: Path, pack: "Pack", model: str, config: Any) -> str:
    return fingerprint(_distill_inputs(run_dir, pack, model, config))


def finished_distill_changes(run_dir: Path, pack: "Pack", model: str, config: Any) -> list[str] | None:
    """The run-only settings (`RUN_ONLY_SETTINGS`) `config` gives otherwise than the finished distill stage was trained
    with, as `setting_changes` names them, when nothing else differs; None when something else does, or distill has
    not finished. A finished run re-run with `--save-steps 10` (or `--no-prefix-cache`) re-ran distill, since its key
    covers every setting: it reloaded the model to restore the same adapter, and the next run without the flag
    did so again. The key is not changed (finished runs keep theirs); the stage's record is compared instead."""
    entry = read_manifest(run_dir)["stages"].get("distill")
    trained = entry.get("config") if isinstance(entry, dict) and entry.get("status") == "done" else None
    if not isinstance(trained, dict):
        return None
    if entry.get("resume_key") != resume_key(run_dir, pack, model, config):
        return None  # the data, model or a training setting changed
    now = json.loads(json.dumps(asdict(config), default=str))  # as run.json holds it
    if any(trained.get(name) != now.get(name) for name in LENGTH):
        return None  # another length: training goes on, or starts over
    return setting_changes(trained, {name: now[name] for name in RUN_ONLY_SETTINGS})


def resume_settings(run_dir: Path, pack: "Pack", model: str, config: Any) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be continued."""
    return {k: v for k, v in _distill_inputs(run_dir, pack, model, config).items() if k not in RESUMABLE_CHANGES}


def resume_key(run_dir: Path, pack: "Pack", model: str, config: Any) -> str:
    return fingerprint(resume_settings(run_dir, pack, model, config))


def setting_changes(recorded: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Each setting that differs from the checkpoint's, as the user would name it."""
    from .distill_settings import FLAGS

    files = {"selected": "selected.jsonl", "heldout": "heldout.jsonl", "pack": "the pack", "model": "the model",
             "model_files": "the model's weights (new files in its directory, or a new commit on the Hub)"}
    changes = []
    for name, value in settings.items():
        if name in recorded and recorded[name] != value:
            flag = FLAGS.get(name, "--" + name.replace("_", "-"))
            changes.append(f"{files[name]} changed" if name in files else f"{flag} {recorded[name]!r} then, {value!r} now")
    return changes


def check_resumable(run_dir: Path, settings: dict[str, Any], processes: int = 1) -> None:
    """Refuse to continue a checkpoint trained on other data, model or settings (only the length may change),
    or by another number of processes (`processes`, this launch's).

    Otherwise the Trainer either fails deep inside with a tensor size mismatch (another LoRA
    rank) or, worse, carries on silently with the checkpoint's optimizer and schedule.
    """
    from .checkpoints import resume_point

    entry, source, where = _checkpoint_record(run_dir)
    checkpoint = resume_point(run_dir)
    if checkpoint is not None:
        _check_same_processes(checkpoint, processes)
    if checkpoint is None or entry.get("resume_key") in (None, fingerprint(settings)):
        return
    changes = setting_changes(entry.get("settings") or {}, settings)
    what = "settings: " + "; ".join(changes) if changes else "data, model or options"
    raise RunError(f"--resume would continue {checkpoint.name}, trained with other {what}", file=str(source),
                   where=where,
                   hint="resume with the options of the interrupted run (only --max-steps, --epochs, "
                        "--save-steps, --[no-]prefix-cache and --[no-]vllm may change), or drop --resume to train afresh")


def _check_same_processes(checkpoint: Path, processes: int) -> None:
    """Refuse to continue on another number of processes than trained `checkpoint`. Each step draws
    --batch-size x --grad-accum instructions per process: a run trained on 2 processes and resumed
    by a plain `pa distill` (or `pa apply`) went on at half the batch, and in another order, while
    policyalign.json named 1 process for the whole run."""
    from .checkpoints import trained_processes

    trained = trained_processes(checkpoint)
    if trained == processes:
        return
    how = f"`torchrun --nproc_per_node {trained} -m policyalign distill RUN_DIR --resume`" if trained > 1 \
        else "`pa distill RUN_DIR --resume` in one process"
    raise RunError(f"--resume would continue {checkpoint.name}, trained on {trained} process{'es' * (trained > 1)}, "
                   f"on {processes} process{'es' * (processes > 1)}: each step would draw another batch",
                   file=str(checkpoint),
                   hint=f"resume it as it was launched, with {how}, or train afresh (`pa distill RUN_DIR` without --resume)")


def checkpoint_record(run_dir: Path) -> dict[str, Any]:
    """What the run's checkpoints were trained with: their `key`, `resume_key`, `settings` and `config`.

    Training writes it beside them when it starts (`checkpoints.CHECKPOINT_RECORD`). run.json's distill
    entry is rewritten when the stage starts, so an attempt that failed before training (a bad
    flag, a prompt too long) would claim the checkpoints it left alone, and they could never be
    resumed; it is read only for runs whose checkpoints have no record.
    """
    return _checkpoint_record(run_dir)[0]


def _checkpoint_record(run_dir: Path) -> tuple[dict[str, Any], Path, str]:
    """`checkpoint_record`, the file it was read from and the place in it (for errors naming it)."""
    from .checkpoints import CHECKPOINT_RECORD, resume_point

    checkpoint = resume_point(run_dir)
    record = checkpoint.parent / CHECKPOINT_RECORD if checkpoint else None
    data = read_json(record) if record and record.is_file() else None
    if isinstance(data, dict) and record is not None:
        return data, record, ""
    return read_manifest(run_dir)["stages"].get("distill", {}), Path(run_dir) / MANIFEST, "stages.distill"


def recorded_distill_config(run_dir: Path) -> dict[str, Any]:
    """The settings the run's last training used (as `pa distill` overrides), or {} before any."""
    config = checkpoint_record(run_dir).get("config")
    return dict(config) if isinstance(config, dict) else {}


def run_distill(run_dir: Path, *, model: str | None = None, pack: "str | Pack | None" = None,
                packs_path: list[Path] | None = None, device: str | None = None, resume: bool = False, restart_if_past: bool = False, overrides: dict[str, Any] | None = None,
                progress: bool = True, report_to: tuple[str, ...] = (), ema_decay_given_as: str | None = None) -> "DistillResult":
    """`ema_decay_given_as` names how the user gave the EMA rate (`--ema-decay`), to refuse it for a base teacher."""
    from .distill import distill_run
    from .distill_settings import check_ema_decay
    from .launch import launch_rank

    run_dir = Path(run_dir)
    the_pack, model = _pack_and_model(run_dir, pack, model, packs_path)
    # The teacher's policy is the one the selection was scored under: another pack's would train on it unseen.
    _check_upstream(run_dir, "filter", {"instructions": _file_hash(run_dir, "instructions.jsonl"),
                                        "pack": the_pack.digest}, "selected.jsonl", "`pa filter`")
    config = distill_config(the_pack, overrides or {})
    check_ema_decay(config, ema_decay_given_as)
    check_device_and_dtype(device)
    settings = resume_settings(run_dir, the_pack, model, config)
    if resume:
        check_resumable(run_dir, settings, launch_rank()[2])
    if launch_rank()[0] != 0:  # another rank of a multi-process run: train; rank 0 keeps the books
        return distill_run(run_dir, the_pack, model, config, device=device, resume=resume,
                           restart_if_past=restart_if_past, progress=False, report_to=report_to)
    record = {"resume_key": fingerprint(settings), "settings": settings,
              "config": json.loads(json.dumps(asdict(config), default=str))}
    key = distill_key(run_dir, the_pack, model, config)
    with stage(run_dir, "distill", lambda: distill_key(run_dir, the_pack, model, config), **record) as results:
        record_inputs(run_dir, the_pack, model)
        result = distill_run(run_dir, the_pack, model, config, device=device, resume=resume,
                             restart_if_past=restart_if_past, progress=progress, record={"key": key, **record},
                             report_to=report_to)
        # what training recorded it was trained with: a restored checkpoint's speed switches, not this call's
        if isinstance(trained := checkpoint_record(run_dir).get("config"), dict):
            rekey_stage(run_dir, "distill", config=trained)
        results.update({"steps": result.steps, "selected": result.train_records, "heldout": result.heldout_records,
                        "internalization_before": result.internalization_before,
                        "internalization_after": result.internalization_after})
    return result


# --------------------------------------------------------------------------- evaluate


def eval_key(run_dir: Path, pack: "Pack", model: str, which: str, options: dict[str, Any]) -> str:
    adapter = adapter_hash(run_dir) if which == "after" else None
    judge = options.get("judge") or ""
    return fingerprint({"pack": pack.digest, **_model_key(model), "adapter": adapter, **options,
                        **({"judge": keyed_judge(judge)} if judge else {}), **judge_weights(judge),
                        **inherited_sets(pack)})


def judge_weights(judge: str) -> dict[str, str]:
    """A local `guard:`/`llm:` judge's files, as for the model: new judge weights in the same
    directory must re-judge, not report the old judge's verdicts. And the rules its verdicts come from
    (`judges.judge_rules`: the refusal detector's, an `llm:` judge's prompt): rules changed in a new policyalign
    must re-judge too, not keep the verdicts of the old."""
    from .judges import judge_rules, split_judge

    kind, model = split_judge(judge)
    rules = judge_rules(judge) if kind else None
    files = _model_key(model, None, "judge_files") if kind in ("guard", "llm") and model else {}
    return {**files, **({"judge_rules": rules} if rules else {})}


def run_eval(run_dir: Path, which: str, *, model: str | None = None, pack: "str | Pack | None" = None,
             device: str | None = None,
             judge: str = "refusal", limit: int | None = None, batch_size: int = 16, max_new_tokens: int = 256,
             progress: bool = True) -> Any:
    """Evaluate the base model (`before`) or base + the run's adapter (`after`) into eval/<which>/."""
    from .evaluate import evaluate
    from .generation import greedy_params

    run_dir = Path(run_dir)
    the_pack, model = _pack_and_model(run_dir, pack, model)
    options = {"judge": judge, "limit": limit, "max_new_tokens": max_new_tokens}
    adapter = run_dir / "adapter" if which == "after" else None
    check_device_and_dtype(device)
    made_from = {"adapter": adapter_hash(run_dir)} if which == "after" else {}  # for `outdated_stage`
    with stage(run_dir, f"eval_{which}", lambda: eval_key(run_dir, the_pack, model, which, options),
               options=options, **made_from) as results:
        result = evaluate(the_pack, model, adapter=adapter, judge=judge, params=greedy_params(max_new_tokens),
                          out_dir=run_dir / "eval" / which, limit=limit, device=device, batch_size=batch_size,
                          progress=progress)
        results["metrics"] = result.summary.get("metrics")
    return result


# --------------------------------------------------------------------------- card


def card_key(run_dir: Path, repo_id: str, license: str | None = None, revision: str | None = None) -> str:
    """A license or revision is keyed only when given, so runs carded before `--license` and
    `--revision` existed keep their key."""
    return _card_key(_card_made_from(run_dir), repo_id, license, revision)


def _card_key(made_from: dict[str, str | None], repo_id: str, license: str | None, revision: str | None) -> str:
    return fingerprint({"repo": repo_id, **made_from,
                        **({"license": license} if license else {}), **({"revision": revision} if revision else {})})


def _card_made_from(run_dir: Path) -> dict[str, str | None]:
    return {name: hashed() for name, hashed in _card_inputs(run_dir).items()}


def push_key(run_dir: Path, repo_id: str, private: bool = False) -> str:
    """The card names the repository and the tag and lists the sha256 of every file it publishes.
    `--private` is in it too: a public run's re-run with --private was skipped as done, leaving the
    user's adapter public without a word (a public push's key is what it was)."""
    return fingerprint({"repo": repo_id, "card": _file_hash(run_dir, "README.md"), **({"private": True} if private else {})})


def run_card(run_dir: Path, repo_id: str, license: str | None = None, revision: str | None = None) -> None:
    """The before/after chart and the model card (README.md) the push would publish (with `license`
    and tag `revision`, as `pa push --license --revision` would publish it)."""
    from .card import load_run, render_model_card
    from .eval_report import plot_before_after
    from .io import write_text

    made_from = _card_made_from(run_dir)  # hashed once: the key `pa apply` compares, and for `outdated_stage`
    with stage(run_dir, "card", _card_key(made_from, repo_id, license, revision), made_from=made_from):
        plot_before_after(run_dir / "eval" / "before" / "eval.json", run_dir / "eval" / "after" / "eval.json",
                          run_dir / "eval" / "before_after.png")
        artifacts = load_run(run_dir)
        write_text(run_dir / "README.md", render_model_card(artifacts, repo_id, revision or artifacts.default_tag,
                                                                license=license))
