"""`pa apply`: synthesize -> filter -> evaluate before -> distill -> evaluate after -> card (-> push).

One run directory, resumable: each stage has a key (a fingerprint of its options and of the
files it reads); a stage whose recorded key is unchanged and whose outputs exist is skipped, a
changed option changes its key and so re-runs it, and its new outputs change the keys of the
stages after it. Every file is written atomically, so a run killed at any moment re-runs to
completion without losing finished work.
"""

from __future__ import annotations

import json
import os
import re
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import HubError, InvalidInputError, PolicyAlignError, PublicRepositoryError, RunError
from .distill_settings import MAX_SEED, check_ema_decay, target_module_names, under_given
from .evaluate import check_eval_options
from .io import output_dir
from .judges import split_judge
from .launch import check_vllm_rollouts, launch_rank, training_device
from .models import check_device_and_dtype
from .pack import Pack
from .run import (check_run_directory, read_manifest, record_inputs, run_held, stage_done, stage_results, unbumped_change,
                  write_manifest)
from .runs import adapter_hash, run_summary
from .scaffold import draft_leftovers
from .stages import (
    SELECTION_FLAGS, distill_config, distill_key, eval_key, filter_config, filter_key, run_distill, run_eval, run_filter,
    card_key, check_models, check_one_selection_rule, checkpoint_record, finished_distill_changes, push_key, resume_key,
    run_card, run_synthesize, selection_given, synthesize_key, synthesize_options,
)
from .tracking import report_targets
from .untrusted_data import ManifestLoader, yaml_syntax_hint

# The built-in tiny model is for the offline demo and tests: these defaults make the whole
# pipeline finish in about a minute on a 2-core CPU. Any option given explicitly wins.
TINY_DEFAULTS: dict[str, Any] = {
    "n": 4, "synth_max_new_tokens": 64, "max_new_tokens": 16, "heldout": 0.2, "keep": 0.8, "max_steps": 60, "learning_rate": 1e-2,
    "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", "batch_size": 8,
    "gradient_accumulation_steps": 1,
    "eval_limit": 12, "eval_max_new_tokens": 24,
}


@dataclass
class ApplyOptions:
    """Everything `pa apply` can be told; `--config run.yaml` fills these, the command line wins."""

    pack: str
    model: str
    out: Path | None = None
    push_to: str | None = None
    private: bool = False
    license: str | None = None
    revision: str | None = None
    device: str | None = None
    seed: int = 0
    # synthesis
    generator: str | None = None
    n: int | None = None
    rounds: int | None = None
    synth_max_new_tokens: int | None = None
    backend: str = "transformers"
    gen_batch_size: int = 16
    # filtering
    keep: float | None = None
    top_n: int | None = None
    min_score: float | None = None
    no_filter: bool = False
    samples: int = 1
    heldout: float = 0.1
    max_new_tokens: int | None = None
    # distillation
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    target_modules: Any = None
    learning_rate: float | None = None
    num_epochs: float | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    teacher: str | None = None
    ema_decay: float | None = None
    kl_top_k: int | None = None
    temperature: float | None = None
    prefix_cache: bool | None = None
    save_steps: int | None = None
    # evaluation
    judge: str = "refusal"
    eval_limit: int | None = None
    eval_max_new_tokens: int = 256
    progress: bool = True
    report_to: Any = None  # integrations the training logs go to (`tracking.report_targets`)
    explicit: set[str] = field(default_factory=set, repr=False)
    flags: set[str] = field(default_factory=set, repr=False)  # those of `explicit` given on the command line
    config: Path | None = field(default=None, repr=False)  # the --config file, for an error to name

    def __post_init__(self) -> None:
        """One spelling of the backend (`--backend vLLM` is `vllm`, which `_distill_overrides` compares),
        checked before the run directory exists."""
        from .generation import backend_name

        self.backend = backend_name(self.backend)
        self.report_to = list(report_targets(self.report_to))


_FIELD_DEFAULTS = {f.name: f.default for f in fields(ApplyOptions)}

# Command-line flags whose `--config` key differs: a file saying `lr:` or `top_k:` is told the key to write
# (`top_k` is not taken as --top-k: in a pack's `training:` the same word is the reverse KL's top-k).
# Options of `pa apply` a config file cannot hold: they say where to find the config and the packs it names.
COMMAND_LINE_ONLY = {"packs_path": "give --packs-path on the command line, or set PA_PACKS_PATH",
                     "config": "a config file names no other config: give --config on the command line",
                     "json": "how the result is printed is the command line's choice: give --json there"}
CONFIG_KEYS_OF_FLAGS = {"lr": "learning_rate", "epochs": "num_epochs", "grad_accum": "gradient_accumulation_steps",
                        "top_k": "top_n (and --kl-top-k, the reverse KL's top-k, is kl_top_k)",
                        "quiet": "progress: false"}
# Names of settings as a pack's `training:` or an adapter's policyalign.json spells them, which a user copies into a
# config file: `filter_keep: 0.3` was hinted "did you mean 'no_filter'?", which trains on everything, and `alpha`
# "did you mean 'lora_alpha'?", the LoRA scale, though policyalign.json's alpha is the loss's KL direction.
CONFIG_KEYS_OF_SETTINGS = {"filter_keep": "a pack's training.filter_keep is keep in a config file (--keep on the "
                                          "command line)",
                           "use_vllm": "rollouts with vLLM are `backend: vllm` in a config file (--backend vllm)",
                           "alpha": "the loss's alpha (1.0, reverse KL, as policyalign.json records it) is fixed: "
                                    "no option sets it; the LoRA scale is lora_alpha"}


def load_config_file(path: Path) -> dict[str, Any]:
    """Options from a YAML (or JSON) file, named as `ApplyOptions` fields (dashes allowed): mostly the long
    command-line names, except the flags in CONFIG_KEYS_OF_FLAGS."""
    if not path.is_file():  # a directory was "config file not found", though it is right there
        what = "a directory, not a config file" if path.is_dir() else "config file not found"
        raise InvalidInputError(what, file=str(path), hint="pass an existing YAML or JSON file to --config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # a file saved as UTF-16 or Latin-1 was a traceback
        raise InvalidInputError(f"not UTF-8 text (byte {exc.start})", file=str(path),
                                hint="save the file as UTF-8") from None
    data = _json_config(text, path)
    if data is _NOT_JSON:
        try:
            data = yaml.load(text, Loader=ManifestLoader)
        except yaml.YAMLError as exc:
            raise InvalidInputError(f"invalid YAML: {exc}", file=str(path), hint=yaml_syntax_hint(exc)) from None
    if not isinstance(data, dict):
        _refuse_non_mapping(data, text, path)
    names = {f.name for f in fields(ApplyOptions)} - {"explicit", "flags", "config"}
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    if len(options) < len(data):
        _refuse_two_spellings(data, path)
    from .errors import did_you_mean

    for key in options:
        if key in CONFIG_KEYS_OF_FLAGS:
            raise InvalidInputError(f"unknown option {key!r}", file=str(path), where=key,
                                    hint=f"in a config file, --{key.replace('_', '-')} is {CONFIG_KEYS_OF_FLAGS[key]}")
        if key in CONFIG_KEYS_OF_SETTINGS:
            raise InvalidInputError(f"unknown option {key!r}", file=str(path), where=key,
                                    hint=CONFIG_KEYS_OF_SETTINGS[key])
        if key in COMMAND_LINE_ONLY:  # "unknown", with the list of known keys, read as a misspelling
            raise InvalidInputError(f"{key!r} is not read from a config file", file=str(path), where=key,
                                    hint=COMMAND_LINE_ONLY[key])
        if key not in names:
            raise InvalidInputError(f"unknown option {key!r}", file=str(path), where=key,
                                    hint=did_you_mean(key, sorted(names), "known options"))
    # `key: null` (or `key:` left blank) is the key left out, its default, for every option but the two a run
    # needs: kept, it counted as given and tiny's demo defaults were skipped for it (`n: null` synthesized the
    # pack's full count, `max_steps: null` trained for epochs), or it was a type error (`seed: null`).
    options = {key: value for key, value in options.items() if value is not None or key in ("pack", "model")}
    checked = check_config_ranges(check_config_types(options, path), path)
    report_targets(checked.get("report_to"), flag="report_to:", file=str(path))
    return from_config_dir(checked, path.parent)


def _refuse_non_mapping(data: Any, text: str, path: Path) -> None:
    """A config that is not one mapping refused, saying what it is. An empty file (or one of comments, `null` or
    `~` only) is refused too, as an empty pack.yaml is: it read as no options at all, so `--config` naming the wrong
    or an unsaved file ran on the command line's options alone without a word; a JSON `null` was also read so,
    as YAML (JSON's null was taken for "not JSON")."""
    blank = all(not line.strip() or line.lstrip().startswith("#") for line in text.removeprefix("\ufeff").splitlines())
    what = ("empty" if blank else "null") if data is None else (
        "a list" if isinstance(data, list) else "text" if isinstance(data, str) else repr(data))
    raise InvalidInputError(f"config is {what}: a config must be a mapping of option: value", file=str(path),
                            hint="write one `option: value` per line, e.g. `pack: NAME` and `model: NAME`")


_NOT_JSON = object()  # `_json_config`'s answer for text to read as YAML: None is JSON's `null`


def _json_config(text: str, path: Path) -> Any:
    """The file read as JSON when it is JSON (a `.json` file, or text that parses as JSON), else _NOT_JSON for YAML:
    JSON is YAML but for tabs, which YAML forbids, and a JSON config indented with tabs (as `json.dumps(indent="\\t")`
    and many editors write) was refused as invalid YAML. A key given twice is refused, as in YAML."""
    from .untrusted_data import DuplicateKey, unique_keys

    try:
        return json.loads(text.removeprefix("\ufeff"), object_pairs_hook=unique_keys)
    except DuplicateKey as exc:
        raise InvalidInputError(f"duplicate key {exc.key!r}: JSON would keep only the last value", file=str(path),
                                where=exc.key, hint="delete one of the two") from None
    except json.JSONDecodeError as exc:
        if path.suffix.lower() != ".json":
            return _NOT_JSON
        raise InvalidInputError(f"invalid JSON: {exc.msg}", file=str(path), where=f"line {exc.lineno}",
                                hint="fix the JSON syntax at that line") from None
    except RecursionError:
        raise InvalidInputError("invalid JSON: nested too deep", file=str(path),
                                hint="a config file is one mapping of option: value") from None


def from_config_dir(options: dict[str, Any], base: Path) -> dict[str, Any]:
    """The file's relative paths (`out`, a `pack` directory, a `model`, `generator` or `guard:`/`llm:` judge
    directory) taken from the file's directory `base`, as a file that names its neighbours means them:
    read from the current directory, `pa apply --config runs/med.yaml` run from elsewhere trained another
    pack (or none) and wrote the run elsewhere. Names (a pack, `tiny`, an alias, a Hub id) are kept;
    command-line flags are still read from the current directory."""
    from .models import model_from, path_text

    resolved = dict(options)
    if isinstance(resolved.get("out"), str):
        resolved["out"] = str(base / Path(resolved["out"]).expanduser())
    pack = resolved.get("pack")
    if isinstance(pack, str) and pack.strip():
        spec = os.path.expanduser(pack)  # the registry's reading of a path (`Registry.resolve_path`), from `base`
        if not os.path.isabs(spec) and (os.sep in spec or spec.startswith(".") or (base / spec).is_dir()):
            resolved["pack"] = path_text(base / spec)
    for key in ("model", "generator"):
        if isinstance(resolved.get(key), str):
            resolved[key] = model_from(resolved[key], base)
    kind, judge = split_judge(str(resolved.get("judge") or ""))
    if kind in ("guard", "llm") and judge:
        resolved["judge"] = f"{kind}:{model_from(judge, base)}"
    return resolved


def _refuse_two_spellings(data: dict[Any, Any], path: Path) -> None:
    """`max_steps: 5` and `max-steps: 7` are one option: two keys to YAML, so its duplicate-key check let
    them through, and the last was kept without a word."""
    spellings: dict[str, list[str]] = {}
    for key in data:
        spellings.setdefault(str(key).replace("-", "_"), []).append(str(key))
    twice = next(keys for keys in spellings.values() if len(keys) > 1)
    raise InvalidInputError(f"{' and '.join(repr(k) for k in twice)} are the same option, given twice",
                            file=str(path), where=twice[-1], hint=f"keep one of {', '.join(twice)}")


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", Path: "a string"}
_EXAMPLES = {bool: "true", int: "1", float: "0.5", str: '"..."', Path: '"..."'}
# The options of type Any, each a name or a list of names: `report_to: []` was told to write `report_to: [q_proj, v_proj]`.
_LIST_EXAMPLES = {"target_modules": "target_modules: [q_proj, v_proj]", "report_to": "report_to: [tensorboard]"}


def check_config_types(options: dict[str, Any], path: Path) -> dict[str, Any]:
    """Each YAML value checked against its `ApplyOptions` field's type, every bad key named in one error.

    YAML types values itself (`yes` is a bool, `"4"` a string), and nothing after this point checks
    them: `seed: abc` would run synthesis and evaluation for minutes before distillation crashed. An
    int is taken where a float is expected (and made a float); a bool is never taken as a number.
    """
    hints = get_type_hints(ApplyOptions)
    checked: dict[str, Any] = {}
    bad: list[tuple[str, str, str]] = []  # key, what is wrong, an example of a right value
    for key, value in options.items():
        hint = hints[key]
        if hint is Any:  # target_modules: all-linear or names; report_to: one name or a list of names
            # A string of targets is read as --target-modules reads it, all-linear or comma-separated names:
            # `target_modules: q_proj,v_proj` was refused in the pack schema's words ("is not valid under any of
            # the given schemas"), though the command line takes it.
            read = target_module_names(value) if key == "target_modules" and isinstance(value, str) else value
            if read is None or isinstance(read, str) or (
                    isinstance(read, (list, tuple)) and read and all(isinstance(v, str) for v in read)):
                checked[key] = read
            else:
                expected = ("all-linear or module names (a list, or comma-separated as --target-modules takes them)"
                            if key == "target_modules" else "a string or a list of strings")
                bad.append((key, f"expected {expected}, got {value!r}", _LIST_EXAMPLES[key]))
            continue
        allowed = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
        kinds = [t for t in allowed if t is not type(None)]
        if value is None and type(None) in allowed:
            checked[key] = None
        elif isinstance(value, bool) and bool in kinds:
            checked[key] = value
        elif isinstance(value, int) and not isinstance(value, bool) and int in kinds:
            checked[key] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and float in kinds:
            checked[key] = float(value)
        elif isinstance(value, str) and (str in kinds or Path in kinds):
            checked[key] = value
        else:
            expected = " or ".join([_TYPE_NAMES[t] for t in kinds] + (["null"] if type(None) in allowed else []))
            got = "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)
            bad.append((key, f"expected {expected}, got {value!r} ({got})", f"{key}: {_EXAMPLES[kinds[0]]}"))
    if bad:
        message = "; ".join(f"{key}: {what}" for key, what, _ in bad)
        if len(bad) > 1:
            message = f"{len(bad)} options have the wrong type: {message}"
        raise InvalidInputError(message, file=str(path), where=", ".join(key for key, _, _ in bad),
                                hint="write e.g. " + ", ".join(f"`{ex}`" for _, _, ex in bad)
                                     + " (numbers and true/false unquoted, text that looks like a number quoted)")
    return checked


def check_config_ranges(options: dict[str, Any], path: Path) -> dict[str, Any]:
    """Training values in the file held to the pack schema's bounds, named as the file's keys: the same
    check runs later on the merged options, but its error would name a command-line flag the user never typed."""
    from .distill_settings import setting_error
    from .synthesize import within_schema

    _check_filter_options(options, path)
    _check_named_choices(options, path)
    for key in _FILE_COUNTS:
        if options.get(key) is not None and options[key] < 1:
            raise InvalidInputError(f"{key}: {options[key]!r}: must be at least 1", file=str(path), where=key,
                                    hint=f"give {key} a positive number, or leave it out for the default")
    for key, setting in (("n", "count_per_category"), ("rounds", "rounds")):  # synthesize's bounds, named as the keys
        if options.get(key) is not None:
            within_schema(options[key], setting, key, file=path)
    if options.get("seed") is not None and not 0 <= options["seed"] <= MAX_SEED:  # not in the pack schema's training
        raise InvalidInputError(f"seed: {options['seed']!r}: must be between 0 and {MAX_SEED}", file=str(path),
                                where="seed", hint="training seeds numpy's generator, which takes a 32-bit unsigned seed")
    keys = {_SETTING_NAMES.get(k, k): k for k, v in options.items() if k in _DISTILL_OPTIONS and v is not None}
    bad = setting_error({setting: options[key] for setting, key in keys.items()})
    if bad is not None:
        setting, value, message = bad
        key = keys[setting]
        raise InvalidInputError(f"{key}: {value!r}: {message}", file=str(path), where=key,
                                hint=f"give {key} a value the pack schema allows for training.{setting}")
    return options


def _check_named_choices(options: dict[str, Any], path: Path) -> None:
    """The file's backend, judge and device checked as the command line's are, the error naming the file and
    key: `backend: foo` was "unknown generation backend 'foo'" and `judge: bogus` "--judge: unknown judge",
    naming neither."""
    from .generation import backend_name
    from .judges import get_judge
    from .models import resolve_device

    # The judge's spec only: its model is looked for (a Hub judge fetched) once, before the first stage.
    checks: dict[str, Callable[[Any], Any]] = {"backend": backend_name, "judge": get_judge, "device": resolve_device}
    for key, check in checks.items():
        if options.get(key) is None:
            continue
        try:
            check(options[key])
        except PolicyAlignError as exc:
            message = exc.problem.message.removeprefix(f"--{key}: ")
            raise InvalidInputError(f"{key}: {message}", file=str(path), where=key, hint=exc.problem.hint) from None


def _check_named_values(options: dict[str, Any], path: Path) -> None:
    """The file's run directory and push settings checked as the command line's are (`out` read from the file's
    directory), each check naming the value `KEY in FILE`: `out: f.txt` naming a file was "--out .../f.txt is not
    a directory", `license: x y` "invalid license id 'x y' (--license)" and `push_to: bad id` named no file."""
    from .card import check_license
    from .hub import check_repo_id, check_tag
    from .io import check_output_dir

    checks: dict[str, Callable[[Any, str], Any]] = {"out": check_output_dir, "push_to": check_repo_id,
                                                    "revision": check_tag, "license": check_license}
    for key, check in checks.items():
        if isinstance(options.get(key), str):
            check(options[key], _config_place(key, path))


# Counts a config file may hold below 1, named as its keys: those only a file sets had no check before their
# stage loaded its model (`eval_max_new_tokens: 0` failed after synthesis and filtering, as "max_new_tokens"),
# and the others' checks name the flag (`eval_limit: 0` said "--eval-limit must be at least 1", naming no file).
_FILE_COUNTS = ("synth_max_new_tokens", "gen_batch_size", "eval_max_new_tokens", "eval_limit", "n", "rounds", "save_steps")
# The filter settings a file may hold, by the flag FilterConfig's errors name.
_FILE_KEYS_OF_FILTER_FLAGS = {"--keep": "keep", "--top-k": "top_n", "--min-score": "min_score", "--samples": "samples",
                              "--max-new-tokens": "max_new_tokens", "--heldout": "heldout", "--no-filter": "no_filter"}


def _check_filter_options(options: dict[str, Any], path: Path) -> None:
    """The file's filter settings held to FilterConfig's bounds, its error worded with the file's keys:
    `keep: 1.5` said "--keep must be in (0, 1]", and `keep: 0.3` with `top_n: 5` "--keep and --top-k are different
    selection rules", naming neither the file nor the keys."""
    from .filtering import FilterConfig

    given = {key: options[key] for key in _FILE_KEYS_OF_FILTER_FLAGS.values() if options.get(key) is not None}
    try:
        check_one_selection_rule(given)
        FilterConfig(**given)
    except InvalidInputError as exc:
        message, named = exc.problem.message, []
        for flag, key in _FILE_KEYS_OF_FILTER_FLAGS.items():
            if flag in message:
                message, named = message.replace(flag, key), named + [key] * (key in given)
        raise InvalidInputError(message, file=str(path), where=", ".join(named),
                                hint=f"fix {' and '.join(named) or 'the filter settings'} in the file") from None


def _given(key: str, value: Any) -> bool:
    """Whether a command-line value was given: an on/off flag whose default is off (--private, --no-filter) is
    False when left out, but --no-prefix-cache's False (its default None) is a choice, and was dropped."""
    return value is not None and (value is not False or _FIELD_DEFAULTS.get(key) is not False)


def build_options(cli: dict[str, Any], config: Path | None) -> ApplyOptions:
    """Config file first, then every option the user actually gave on the command line.

    A selection flag (--keep, --top-k, --min-score, --no-filter) on the command line replaces the
    file's selection rule whole: only one rule can apply, and the command line wins. So does --epochs
    given without --max-steps over the file's `max_steps` (`under_given`): the trainer stops at max_steps
    whatever the epochs, so `--epochs 3` trained the file's few steps without a word."""
    from_file = load_config_file(config) if config else {}
    if any(selection_given(cli.get(name)) for name in SELECTION_FLAGS):
        from_file = {k: v for k, v in from_file.items() if k not in SELECTION_FLAGS}
    flags = {key: value for key, value in cli.items() if _given(key, value)}
    if config:  # the file's values the command line does not replace
        _check_named_values({key: value for key, value in from_file.items() if key not in flags}, config)
    merged = under_given(from_file, flags)
    explicit = set(merged)
    for key in ("pack", "model"):
        if not merged.get(key):
            raise InvalidInputError(f"missing {key}", hint=f"give {key.upper()} on the command line or `{key}:` in --config")
    _check_push_keys(from_file, merged, config)
    # No shell expands `~` in a config file: `out: ~/runs/demo` made a directory named `~` in the current one,
    # while the Trainer (which expands it) put the checkpoints in the home directory, where a resume never looked.
    if "out" in merged and merged["out"] is not None:
        merged["out"] = Path(merged["out"]).expanduser()
    merged["pack"] = os.path.expanduser(merged["pack"])  # as a model directory's `~` is (`models.resolve_model`)
    return ApplyOptions(**merged, explicit=explicit, flags=set(flags), config=config)


def _check_push_keys(from_file: dict[str, Any], merged: dict[str, Any], config: Path | None) -> None:
    """The file's `private:` or `revision:` without a repository to push to, named as the file's keys: the
    check on the merged options said "--private only applies with --push-to ... or drop --private", a flag
    the user never typed and cannot drop."""
    for key in ("private", "revision"):
        if from_file.get(key) and not merged.get("push_to"):
            raise InvalidInputError(f"{key} only applies with push_to", file=str(config), where=key,
                                    hint=f"add `push_to: ORG/NAME` to the file (or --push-to), or drop `{key}:`")


def with_model_defaults(options: ApplyOptions) -> ApplyOptions:
    """Apply the tiny demo defaults to every option the user left unset (its --keep only if no rule was chosen)."""
    if options.model.strip().lower() != "tiny":
        return options
    given = [name for name in SELECTION_FLAGS if name in options.explicit]
    chosen_rule = any(selection_given(getattr(options, name)) for name in given)
    explicit = {key: getattr(options, key) for key in options.explicit}
    for key, value in under_given(TINY_DEFAULTS, explicit).items():
        if not (key == "keep" and chosen_rule):
            setattr(options, key, value)
    return options


# tiny's demo options that replace a pack value of another name: a `training:` setting, or a `synthesis.` path.
_PACK_SETTING_OF_OPTION = {"keep": "filter_keep", "kl_top_k": "top_k", "n": "synthesis.count_per_category",
                           "synth_max_new_tokens": "synthesis.sampling.max_new_tokens"}


def demo_replacements(options: ApplyOptions, pack: Pack) -> list[str]:
    """The pack's `training:` and `synthesis:` values that tiny's demo defaults replaced (`with_model_defaults`
    applied), as `setting DEMO (pack: PACK)`: a pack author trying their LoRA rank, targets or learning rate on tiny
    saw none of them used and was not told (policyalign.json and the card record the values used); nor their
    count_per_category (16 asked, 4 made), though `pa apply --help` says a note names each pack value replaced."""
    if options.model.strip().lower() != "tiny":
        return []
    replaced = []
    for key in TINY_DEFAULTS:
        setting = _PACK_SETTING_OF_OPTION.get(key, key)
        written = _pack_value(pack, setting)
        if key in options.explicit or written is None:
            continue
        used = getattr(options, key)
        if used is not None and (list(used) if isinstance(used, tuple) else used) != written:
            replaced.append(f"{setting} {used!r} (pack: {written!r})")
    return replaced


def _pack_value(pack: Pack, setting: str) -> Any:
    """The pack's value of a `training:` setting or a dotted `synthesis.` path, plain; None where it sets none."""
    from .frozen import thaw

    node: Any = pack.training
    names = setting.split(".")
    if names[0] == "synthesis":
        node, names = pack.synthesis, names[1:]
    for name in names:
        if not isinstance(node, Mapping) or name not in node:
            return None
        node = node[name]
    return thaw(node)


def default_run_dir(pack: Pack, model: str) -> Path:
    """runs/PACK-VERSION-MODEL, the model in its one spelling (`models.spelled_name`): named as typed,
    `--model Tiny` (or `qwen2.5-7b`) started a new run, re-running every stage of the `--model tiny` one."""
    from .models import resolve_model, spelled_name

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", spelled_name(resolve_model(model))).strip("-")
    return Path("runs") / f"{pack.name}-{pack.version}-{slug}"


# --------------------------------------------------------------------------- orchestration


@dataclass
class StageReport:
    name: str
    status: str  # "ran" | "skipped"


@dataclass
class ApplyResult:
    run_dir: Path
    stages: list[StageReport]
    summary: dict[str, Any]
    url: str | None = None


def _filter_options(o: ApplyOptions) -> dict[str, Any]:
    return {"keep": o.keep, "top_n": o.top_n, "min_score": o.min_score, "no_filter": o.no_filter,
            "samples": o.samples, "max_new_tokens": o.max_new_tokens, "heldout": o.heldout, "seed": o.seed,
            "kl_top_k": o.kl_top_k, "temperature": o.temperature}


# `pa apply` option -> the training setting it overrides, where the names differ.
_SETTING_NAMES = {"kl_top_k": "top_k"}
_DISTILL_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "num_epochs",
                    "max_steps", "batch_size", "gradient_accumulation_steps", "max_new_tokens", "teacher",
                    "ema_decay", "kl_top_k", "seed", "temperature", "prefix_cache", "save_steps")


def _distill_overrides(o: ApplyOptions) -> dict[str, Any]:
    overrides = {_SETTING_NAMES.get(name, name): getattr(o, name) for name in _DISTILL_OPTIONS}
    return {**overrides, "use_vllm": True if o.backend == "vllm" else None}


def _eval_options(o: ApplyOptions) -> dict[str, Any]:
    return {"judge": o.judge, "limit": o.eval_limit, "max_new_tokens": o.eval_max_new_tokens}


def _outputs_exist(run_dir: Path, names: list[str]) -> bool:
    """Each of `names` (a path, or a glob such as the adapter's weights, `adapter_model.*`) is there."""
    return all(any(run_dir.glob(name)) for name in names)


def _require_selection(run_dir: Path) -> None:
    """Stop right after filtering when it kept nothing: distillation would refuse it anyway, after the evaluation."""
    if stage_results(run_dir, "filter").get("selected") == 0:
        raise RunError("filtering selected no instructions: nothing to train on", file=str(run_dir / "selected.jsonl"),
                       hint="loosen the selection (a higher --keep, a lower --min-score) or pass --no-filter")


def apply(options: ApplyOptions, pack: Pack, *, on_stage: Callable[[str, str], None] = lambda n, s: None,
          on_note: Callable[[str], None] = lambda text: None) -> ApplyResult:
    """Run (or resume) every stage for `pack` and `options.model` in one run directory, which it holds
    (`run.run_held`, which clears its stale temporaries) until the end. `on_note` hears, before any
    stage runs, that finished work is about to be replaced (`run.unbumped_change`), that the pack
    is still a `pa new` draft, and which of its values tiny's demo settings replace."""
    options = with_model_defaults(options)
    settings = _checked_settings(options, pack)
    if replaced := demo_replacements(options, pack):
        on_note("--model tiny trains with its demo settings, not the pack's values: " + ", ".join(replaced)
                + " (give an option, or put it in --config, to choose its value)")
    if leftovers := draft_leftovers(pack):
        on_note(f"{pack.ref} still holds {len(leftovers)} piece(s) of stand-in text from `pa new` (`pa validate "
                f"{pack.root}` lists them): this run trains and evaluates on them")
    run_dir = output_dir(options.out or default_run_dir(pack, options.model), _given_as(options, "out"))
    with run_held(run_dir):
        check_run_directory(run_dir)
        return _apply(options, pack, run_dir, settings, on_stage, on_note)


def _checked_settings(options: ApplyOptions, pack: Pack) -> tuple[Any, Any]:
    """Every stage's settings (the filter's and distillation's configs, returned), checked before the run
    directory is made or any stage runs: a bad --save-steps should not surface after minutes of
    synthesis and filtering, nor a bad --keep leave behind an empty run that `pa runs` lists."""
    from .synthesize import check_settings as check_synthesis_settings

    check_models((options.model, _given_as(options, "model")), (options.generator, _given_as(options, "generator")))
    check_synthesis_settings(pack, n_per_category=options.n, rounds=options.rounds, batch_size=options.gen_batch_size,
                             max_per_category=None, seed=options.seed,
                             sampling=None if options.synth_max_new_tokens is None else
                             {"max_new_tokens": options.synth_max_new_tokens})
    fconf = filter_config(pack, **_filter_options(options))
    dconf = distill_config(pack, _distill_overrides(options))
    check_ema_decay(dconf, _given_as(options, "ema_decay") if "ema_decay" in options.explicit else None)
    _check_target_modules(options.model, pack, dconf.target_modules,
                          "--target-modules" if "target_modules" in options.flags else "target_modules in --config",
                          options.config if "target_modules" in options.explicit - options.flags else None)
    judge_as = _given_as(options, "judge")  # as --judge, its error names the spec too (`--judge llm:j: ...`)
    check_eval_options(options.judge, options.eval_limit, limit_flag="--eval-limit",
                       judge_as=None if judge_as == "--judge" else judge_as)
    device = training_device(options.device, *launch_rank()[1:])
    check_device_and_dtype(device)  # and PA_DTYPE, which else fails once synthesis loads its model
    if options.backend == "vllm":  # synthesis, filtering and the rollouts: refused now, not once a model has loaded
        check_vllm_rollouts(device)
    _check_push_options(options, pack)
    return fconf, dconf


def _given_as(options: ApplyOptions, key: str) -> str:
    """Where the user gave option `key`, for an error to name: its flag, or `key in FILE` when --config set it
    and the command line did not."""
    if options.config is not None and key in options.explicit - options.flags:
        return _config_place(key, options.config)
    return "--" + key.replace("_", "-")


def _config_place(key: str, config: Path) -> str:
    """A --config file's value named for an error, `KEY in FILE`, as a flag's is named `--flag`."""
    return f"{key} in {config}"


def _check_target_modules(model: str, pack: Pack, targets: tuple[str, ...] | str, flag: str,
                          config: Path | None = None) -> None:
    """The LoRA targets checked against the model's modules (its weightless skeleton) before the first stage:
    a misspelt `training.target_modules` passes `pa validate`, which cannot know the model, and was refused
    only by distillation, after synthesis, filtering and the first evaluation. `flag` is where the user set
    them, the command line or --config, for the error to name; `config` the --config file when the targets in
    use are its `target_modules:`, named as a file (the error said "target_modules in --config", naming none,
    and told the user to fix them "on the command line or in the pack")."""
    from .distill_settings import target_modules_origin
    from .models import module_skeleton, resolve_model
    from .trainer import check_module_names

    if isinstance(targets, str) or (skeleton := module_skeleton(model)) is None:
        return
    check_module_names(skeleton, resolve_model(model).name, targets,
                       (str(config), "target_modules") if config else target_modules_origin(pack, targets, flag=flag))


def _apply(options: ApplyOptions, pack: Pack, run_dir: Path, settings: tuple[Any, Any],
           on_stage: Callable[[str, str], None], on_note: Callable[[str], None]) -> ApplyResult:
    note = unbumped_change(read_manifest(run_dir), pack)
    record_inputs(run_dir, pack, options.model, options={k: v for k, v in asdict(options).items()
                                                          if k not in ("explicit", "flags", "config", "progress", "out")})
    if note:
        on_note(note)
    common = {"device": options.device, "progress": options.progress}
    reports: list[StageReport] = []
    fconf, dconf = settings

    def step(name: str, key: str, outputs: list[str], action: Callable[[], Any], kept: str | None = None) -> None:
        """Run stage `name` unless it finished under `key`, or finished and `kept` is the note saying why the
        changes since (another key) do not change what it made."""
        if (stage_done(run_dir, name, key) or kept is not None) and _outputs_exist(run_dir, outputs):
            if kept:
                on_note(kept)
            reports.append(StageReport(name, "skipped"))
            on_stage(name, "skipped")
            return
        on_stage(name, "running")
        action()
        reports.append(StageReport(name, "ran"))
        on_stage(name, "done")

    synth_opts = synthesize_options(options.model, options.generator, options.n, options.rounds, options.seed,
                                    None, options.synth_max_new_tokens, options.backend)
    step("synthesize", synthesize_key(pack, options.model, synth_opts), ["instructions.jsonl"],
         lambda: run_synthesize(run_dir, pack, options.model, generator=options.generator, n=options.n,
                                rounds=options.rounds, seed=options.seed, batch_size=options.gen_batch_size,
                                max_new_tokens=options.synth_max_new_tokens,
                                backend=options.backend, **common))
    step("filter", filter_key(run_dir, pack, options.model, fconf, options.backend), ["selected.jsonl", "heldout.jsonl"],
         lambda: run_filter(run_dir, model=options.model, pack=pack, backend=options.backend,
                            **common, **_filter_options(options)))
    _require_selection(run_dir)
    eopts = _eval_options(options)
    step("eval_before", eval_key(run_dir, pack, options.model, "before", eopts), ["eval/before/eval.json"],
         lambda: run_eval(run_dir, "before", model=options.model, pack=pack, **eopts, **common))
    dkey = distill_key(run_dir, pack, options.model, dconf)
    # Continue the last checkpoint whenever it was training the same thing (only the length, the
    # checkpoint interval or a speed switch changed): a longer --max-steps trains on from there, and
    # a checkpoint already past a shorter one is set aside for a fresh run.
    recorded = checkpoint_record(run_dir)
    same = recorded.get("resume_key") == resume_key(run_dir, pack, options.model, dconf) or recorded.get("key") == dkey
    # The weights too: with policyalign.json alone, a run whose weights were deleted skipped distill, then failed
    # to load the adapter in eval_after ("Repo id must be in the form ...") instead of restoring it.

    def distill() -> Any:
        if not same and (fresh := _fresh_training_note(run_dir, pack, options.model, dconf, recorded)):
            on_note(fresh)
        return run_distill(run_dir, model=options.model, pack=pack, resume=same, restart_if_past=True,
                           overrides=_distill_overrides(options), report_to=tuple(options.report_to), **common)

    # Only --save-steps or a speed switch changed since distill finished: its adapter is what training would
    # restore from the last checkpoint, so it is kept, with the settings it was trained with on record.
    unused = finished_distill_changes(run_dir, pack, options.model, dconf)
    kept = None if unused is None else "" if not unused else (
        f"distill: {'; '.join(unused)}: no effect on the finished adapter, kept as trained (how training runs, "
        "not what it trains)")
    step("distill", dkey, ["adapter/policyalign.json", "adapter/adapter_config.json", "adapter/adapter_model.*"],
         distill, kept)
    step("eval_after", eval_key(run_dir, pack, options.model, "after", eopts), ["eval/after/eval.json"],
         lambda: run_eval(run_dir, "after", model=options.model, pack=pack, **eopts, **common))
    # The directory's own name however --out spelled it: `--out .` named the card's repository "local/",
    # re-rendering a finished run's card with usage lines that cannot work.
    repo_id = options.push_to or f"local/{run_dir.resolve().name}"
    step("card", card_key(run_dir, repo_id, options.license, options.revision), ["README.md", "eval/before_after.png"],
         lambda: run_card(run_dir, repo_id, options.license, options.revision))
    url = None
    if options.push_to:
        pkey = push_key(run_dir, options.push_to, options.private)
        step("push", pkey, ["README.md"],
             lambda: _push(run_dir, options, pkey))
        url = read_manifest(run_dir)["stages"]["push"]["url"]
    return ApplyResult(run_dir, reports, run_summary(run_dir), url)


# What a checkpoint was trained on besides its settings: a change there retrains as every stage after it does.
_UPSTREAM = ("selected", "heldout", "pack", "model", "model_files")


def _fresh_training_note(run_dir: Path, pack: Pack, model: str, dconf: Any, recorded: dict[str, Any]) -> str | None:
    """Why distillation starts over although a checkpoint is there, when training settings changed (None
    otherwise): it is not continued, and its checkpoints were replaced without a word, as if the rerun had
    resumed. A new selection, pack or model retrains the stages before it too, and says so (`unbumped_change`)."""
    from .checkpoints import resume_point
    from .stages import resume_settings, setting_changes

    checkpoint = resume_point(run_dir)
    settings = {k: v for k, v in resume_settings(run_dir, pack, model, dconf).items() if k not in _UPSTREAM}
    changes = setting_changes(recorded.get("settings") or {}, settings)
    if checkpoint is None or not changes:
        return None
    return (f"distill: {checkpoint.name} was trained with other settings: {'; '.join(changes)}; "
            "training afresh, replacing its checkpoints")


def _check_push_options(options: ApplyOptions, pack: Pack) -> None:
    """What the push will need, checked before training: a repository id, a token and a valid tag (the default
    one, made from the pack's name and version, as well: it was checked only by the push, after training)."""
    from .adapter_push import check_push_target
    from .card import adapter_tag, check_license
    from .hub import push_tag

    for flag, given in (("--revision", options.revision), ("--private", options.private)):
        if given and not options.push_to:
            raise InvalidInputError(f"{flag} only applies with --push-to", hint=f"add --push-to ORG/NAME, or drop {flag}")
    if options.push_to:
        check_push_target(options.push_to, option=_given_as(options, "push_to"))
        push_tag(options.revision, adapter_tag(pack.name, pack.version), f"pack {pack.ref}",
                 _given_as(options, "revision"))
    check_license(options.license, _given_as(options, "license"))  # the card stage writes it with or without --push-to


def _push(run_dir: Path, options: ApplyOptions, key: str) -> None:
    """Publish the run and record it with its key: a re-run skips a push of the same card, whose
    tag the Hub already holds (pushing it again could only fail: `pa push` never moves a tag;
    a retrained run is published under a new `--revision`)."""
    from .adapter_push import published_url, push_run

    try:
        url = push_run(run_dir, str(options.push_to), private=options.private, revision=options.revision,
                       license=options.license)
    except PublicRepositoryError:  # what the tag holds does not matter: the user asked for it to be private
        raise
    except HubError:
        url = published_url(run_dir, str(options.push_to), revision=options.revision, license=options.license)
        if url is None:
            raise
    manifest = read_manifest(run_dir)
    # the adapter it published: retrained later, the run no longer holds what the URL shows (`runs._published_url`)
    manifest["stages"]["push"] = {"status": "done", "key": key, "url": url, "adapter": adapter_hash(run_dir)}
    write_manifest(run_dir, manifest)
