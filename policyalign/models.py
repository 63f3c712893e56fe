"""Resolve a model name to a location, and load it with the right device, dtype and tokenizer.

Users name models four ways: the built-in `tiny`, a local directory, a Hub id
(`org/name[@revision]`), or a short alias (`Qwen2.5-7B`). Every stage loads through
`load_model`, so the same code path serves `tiny` on a CPU laptop and a 14B model on a GPU,
and every user mistake (a typo, a missing download, a prompt longer than the context) ends
in a `ResolveError`/`ModelError` with a fix, not a traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .chat import leaves_out_user_text
from .errors import InvalidInputError, ModelError, PolicyAlignError, ResolveError

# Short names for the chat models the method was tried on; values are Hub ids.
MODEL_ALIASES: dict[str, str] = {
    "Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen2.5-1.5B": "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen2.5-3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5-7B": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen2.5-14B": "Qwen/Qwen2.5-14B-Instruct",
    "Qwen3-4B": "Qwen/Qwen3-4B",
    "Qwen3-8B": "Qwen/Qwen3-8B",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B-Instruct",
    "Mistral-7B": "mistralai/Mistral-7B-Instruct-v0.3",
    "gemma-2-9b": "google/gemma-2-9b-it",
}
TINY = "tiny"

_ALIAS_INDEX = {alias.lower(): alias for alias in MODEL_ALIASES}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_DTYPES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}

Kind = Literal["tiny", "local", "hub"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: `location` is what `from_pretrained` takes (a directory or a Hub id)."""

    name: str
    kind: Kind
    location: str
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "tiny":
            return TINY
        return f"{self.location}@{self.revision}" if self.revision else self.location

    def public(self) -> "ModelRef":
        """The model as files that are published name it (policyalign.json, eval.json, the card,
        adapter_config.json): a local directory by its own name, `tiny` as `tiny`. Its path (the
        user's home directory, username included) means nothing on the Hub; a Hub id is kept."""
        if self.kind == "local":
            name = Path(self.location).name
            return ModelRef(name=name, kind="local", location=name, revision=self.revision)
        if self.kind == "tiny":
            return ModelRef(name=TINY, kind="tiny", location=TINY, revision=self.revision)
        return self


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to use: `device` like "cpu" or "cuda:0", `dtype` a torch.dtype.

    `model` is None when loaded with `weights=False` (for vLLM, which loads its own copy);
    `config` is the model's config either way.
    """

    model: Any
    tokenizer: Any
    ref: ModelRef
    device: str
    dtype: Any
    config: Any = None


# --------------------------------------------------------------------------- resolving


def resolve_model(name: str) -> ModelRef:
    """Turn what the user typed into a `ModelRef`; raises `ResolveError` with a fix if it can't.

    Order matters: an existing local directory wins over a Hub id of the same shape, and a
    path-looking name that does not exist is reported as a missing directory (not sent to
    the Hub, where it would fail later with a confusing message).
    """
    text = name.strip()
    if not text:
        raise ResolveError("empty model name", hint=_NAME_HINT)
    if text.lower() == TINY:
        from .tiny import tiny_model_path

        return ModelRef(name=TINY, kind="tiny", location=str(tiny_model_path()))
    path = Path(text).expanduser()
    if path.exists():
        return _local_ref(text, path)
    if _looks_like_path(text.partition("@")[0]):  # a revision may hold slashes: org/name@refs/pr/1
        raise ResolveError(
            f"model directory not found: {path}", file=str(path),
            hint="check the path, or use an alias (`pa models`) or a Hub id like Qwen/Qwen2.5-7B-Instruct",
        )
    base, _, revision = text.partition("@")
    if "@" in text and not revision:
        raise ResolveError(f"empty revision in {text!r}", hint="write org/name@REVISION, or drop the '@'")
    alias = _ALIAS_INDEX.get(base.lower())
    if alias is not None:
        return ModelRef(name=alias, kind="hub", location=MODEL_ALIASES[alias], revision=revision or None)
    if _HUB_ID.match(base):
        return ModelRef(name=base, kind="hub", location=base, revision=revision or None)
    raise ResolveError(f"unknown model {text!r}", hint=_did_you_mean(base))


_NAME_HINT = "use `tiny`, an alias from `pa models`, a Hub id like Qwen/Qwen2.5-7B-Instruct, or a local directory"


def _local_ref(text: str, path: Path) -> ModelRef:
    """A local model directory must hold config.json; say what it looks like otherwise."""
    if not path.is_dir():
        raise ResolveError(f"not a model directory: {path}", file=str(path), hint="pass the directory that holds config.json")
    if not (path / "config.json").is_file():
        hint = "pass the directory that holds config.json and the weights"
        if (path / "adapter_config.json").is_file():
            hint = "this is a PEFT adapter: pass its base model as the model and this directory as the adapter"
        raise ResolveError(f"no config.json in model directory {path}", file=str(path), hint=hint)
    return ModelRef(name=text, kind="local", location=str(path.resolve()))


@contextmanager
def named_model_errors(given_as: str) -> Iterator[None]:
    """A model that cannot be found or loaded, named by where the user gave it (`--generator`, `judge in FILE`):
    a config file's `generator: ./gen` that is not there said only "model directory not found: .../gen", as if
    the file's `model:` or the command line were wrong."""
    try:
        yield
    except (ResolveError, ModelError) as exc:
        problem = exc.problem
        raise type(exc)(f"{given_as}: {problem.message}", file=problem.file, where=problem.where,
                        hint=problem.hint) from None


def model_from(text: str, base: Path) -> str:
    """`text` as `resolve_model` would read it from the directory `base` instead of the current one: a
    relative model directory (one that exists under `base`, or a name that looks like a path) joined to
    `base`; `tiny`, an alias, a Hub id and an absolute or `~` path as they are. `pa apply --config` reads
    a file's paths from the file's directory."""
    stripped = text.strip()
    if not stripped or stripped.lower() == TINY:
        return text
    path = Path(stripped).expanduser()
    if path.is_absolute():
        return text
    if (base / path).exists() or _looks_like_path(stripped.partition("@")[0]):
        return path_text(base / path)
    return text


def path_text(path: Path) -> str:
    """A relative path as text that still reads as one: `./runs/m`, not `runs/m` (an `org/name` Hub id
    to `resolve_model`, a pack name to the registry when it is not there)."""
    return str(path) if path.is_absolute() else os.path.join(".", str(path))


def _looks_like_path(text: str) -> bool:
    """Names a user meant as a filesystem path rather than an alias or `org/name`."""
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or text.endswith("/")
        or text.count("/") > 1
    )


def _did_you_mean(base: str) -> str:
    """A "did you mean" hint from the aliases and `tiny`, else the general hint."""
    candidates = {key: alias for key, alias in _ALIAS_INDEX.items()}
    candidates[TINY] = TINY
    close = difflib.get_close_matches(base.lower(), list(candidates), n=3, cutoff=0.6)
    if close:
        names = " or ".join(candidates[c] for c in close)
        return f"did you mean {names}? (`pa models` lists the aliases)"
    return _NAME_HINT


# --------------------------------------------------------------------------- license

LICENSE_KEYS = ("license", "license_name", "license_link")


def model_readme(ref: ModelRef, commit: str | None = None) -> Path | None:
    """The model's own card (README.md), found offline: in a local model directory, or in the
    Hugging Face cache snapshot the weights came from (`commit`, else the asked-for revision).
    `from_pretrained` does not fetch README.md, so a Hub model has one only when it was
    downloaded whole (`hf download`); None when there is none to read."""
    if ref.kind == "local":
        path = Path(ref.location) / "README.md"
        return path if path.is_file() else None
    if ref.kind != "hub":
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.location, "README.md", revision=commit or ref.revision)
    return Path(found) if isinstance(found, str) else None


def model_license(ref: ModelRef, commit: str | None = None) -> dict[str, str]:
    """`license` (and `license_name`/`license_link`, which the Hub pairs with `license: other`) from
    the YAML front matter of the model's README.md: the adapter's card states the base model's license."""
    from .card import parse_card

    readme = model_readme(ref, commit)
    if readme is None:
        return {}
    metadata, _ = parse_card(readme.read_text(encoding="utf-8", errors="replace"))
    return {key: value.strip() for key in LICENSE_KEYS
            if isinstance(value := metadata.get(key), str) and value.strip()}


# --------------------------------------------------------------------------- identity in cache keys


def local_files_key(directory: str | Path) -> str:
    """The identity of a local model directory's weights: the name and sha256 of each file in it, never its path.

    A directory's path says nothing about the weights in it: a fine-tune saved over the same directory
    left every cache and stage key unchanged, so `pa apply` skipped synthesis, filtering, training and
    evaluation, and synthesis served generations of the old weights. Nor does the path name them: keyed
    by it, the same directory moved (or copied) elsewhere was another model, and its run's every stage
    was refused or re-run. A file's sha256 is read once per file as stored (`_file_sha256`), so keying
    a 14B model again, or after a move, costs a stat per file.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).iterdir() if p.is_file()):
        digest.update(f"{path.name}\0{_file_sha256(path)}\n".encode())
    return digest.hexdigest()[:16]


# Each file's sha256 by what identifies its bytes as stored (device, inode, size, mtime), in memory and in
# PA_CACHE_DIR/file-sha256.json: a rename keeps all four, and new bytes written change the mtime.
_SHA256_CACHE = "file-sha256.json"
_sha256_by_stat: dict[str, str] = {}


def _file_sha256(path: Path) -> str:
    from .io import read_json, sha256_file, write_json
    from .tiny import cache_dir

    info = path.stat()  # symlinks (as in the Hub cache) followed: the bytes they name
    key = f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"
    if key in _sha256_by_stat:
        return _sha256_by_stat[key]
    store = cache_dir() / _SHA256_CACHE
    try:
        known = read_json(store) if store.is_file() else {}
    except (OSError, PolicyAlignError, ValueError):  # unreadable or torn: computed again
        known = {}
    known = known if isinstance(known, dict) else {}
    if not isinstance(known.get(key), str):
        known[key] = sha256_file(path)
        try:
            write_json(store, known)
        except (OSError, PolicyAlignError):  # a read-only cache (io's RunError): computed again next time, never a failure
            pass
    _sha256_by_stat[key] = known[key]
    return known[key]


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_commit(ref: ModelRef) -> str | None:
    """The commit a Hub model loads from, read offline from the Hugging Face cache (`refs/<revision>`
    names the snapshot a branch or tag resolved to when it was last downloaded); the revision
    itself when it is a commit; None for other models, or a Hub model not downloaded yet.

    The name says nothing about the weights: `org/name` is whatever `main` was when the cache was
    filled, and a new commit on the Hub must not be served the old commit's stages."""
    if ref.kind != "hub":
        return None
    if ref.revision and _COMMIT.match(ref.revision):
        return ref.revision
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.location, "config.json", revision=ref.revision)
    return Path(found).parent.name if isinstance(found, str) else None


def fetch_hub_files(ref: ModelRef) -> None:
    """A Hub model whose config the cache does not hold for its revision: its tokenizer and config fetched now
    (`load_model(weights=False)`, so the weights still load once, in the stage that needs them), so that one
    neither cached nor downloadable (offline, a misspelt id) is refused before a run directory is made or a
    stage starts: `pa apply --model Qwen2.5-7B` offline left a run that `pa runs` listed as "failed at
    synthesize". Other models, and a Hub model already cached, are left alone."""
    if ref.kind != "hub":
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(ref.location, "config.json", revision=ref.revision), str):
        load_model(ref, weights=False)


def weights_key(ref: ModelRef) -> str | None:
    """What a cache key must add to the model's name so changed weights change it: the files'
    fingerprint of a local directory, the commit of a Hub model (`hub_commit`); None for `tiny`
    (its content key names its weights) and a Hub model not downloaded yet."""
    return local_files_key(ref.location) if ref.kind == "local" else hub_commit(ref)


def loaded_commit(loaded: LoadedModel) -> str | None:
    """The Hub commit a loaded model's files came from (transformers records it on the config); None
    for other models. Asked without a revision, that is whatever `main` was when it was downloaded."""
    config = loaded.config if loaded.config is not None else getattr(loaded.model, "config", None)
    commit = getattr(config, "_commit_hash", None) if loaded.ref.kind == "hub" else None
    return commit if isinstance(commit, str) else None


LOCAL = "local directory"


def keyed_name(ref: ModelRef) -> str:
    """The model's name in a cache key, not as the user typed it: a Hub model whose commit is
    known by its repository alone, as the commit beside it says which weights, so an alias,
    `org/name`, `org/name@main` and `org/name@<commit>` loading the same commit key the same; one not
    downloaded yet by its name and revision as resolved, an alias in its one spelling (aliases resolve
    whatever their case: keyed as typed, `Qwen2.5-7B` and `qwen2.5-7b` re-ran each other's stages) and
    an `org/name` as typed, so runs keyed before keep their keys; a local directory as one (LOCAL), its
    files' content (`weights_key`) beside it saying which weights, so `./m`, `/abs/m` and the directory
    moved elsewhere key the same; `tiny` by its one name, however it was typed (`Tiny`, ` tiny ` resolve
    to it, and re-ran every stage of a finished run)."""
    if ref.kind == "local":
        return LOCAL
    if ref.kind == "hub" and hub_commit(ref):
        return ref.location
    return spelled_name(ref)


def spelled_name(ref: ModelRef) -> str:
    """The model as typed, but in one spelling where resolving ignores case: `tiny`, an alias as `pa
    models` lists it (with the revision asked for); an `org/name[@revision]` or a directory as given."""
    return f"{ref.name}@{ref.revision}" if ref.kind == "hub" and ref.revision else ref.name


def recorded_name(model: str) -> str:
    """The model as run.json records it, for the run's later commands to load: a local directory by
    its absolute path, since `pa filter RUN_DIR` run from another directory resolved `./m` there."""
    try:
        ref = resolve_model(model)
    except PolicyAlignError:  # the stage that loads it says what is wrong, with its hint
        return model
    return ref.location if ref.kind == "local" else model


def recorded_weights(model: str) -> dict[str, str]:
    """`{"model_files": weights_key}` of a local model directory, as run.json records it beside the
    directory's path: after the directory moves, the path names nothing, and its files tell the run's
    model typed at its new place (`run.same_model`) from another. Empty for other models."""
    try:
        ref = resolve_model(model)
    except PolicyAlignError:
        return {}
    return {"model_files": local_files_key(ref.location)} if ref.kind == "local" else {}


# --------------------------------------------------------------------------- loading


def resolve_device(device: str | None) -> str:
    """None/"auto" picks CUDA when present, else CPU; an explicit CUDA (or other accelerator) without
    one is an error. A name that is no device is invalid input (exit 2, as `--backend bogus` is), where the
    machine lacking the device asked for is not (exit 1: the same command runs on another)."""
    import torch

    wanted = (device or "auto").strip().lower()
    if wanted == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(wanted)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {device!r}", hint='use "cpu", "cuda", "cuda:N" or "auto"') from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} requested but no CUDA GPU is available", hint='use --device cpu')
        index = parsed.index or 0
        if index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPU(s) visible)")
        return f"cuda:{index}"
    if parsed.type == "cpu":  # one CPU whatever the index: "cpu:0" skipped every `== "cpu"` (one thread for small models)
        return "cpu"
    if not _device_type_available(parsed.type):
        # `mps` without Apple's GPU (or `meta`, `xpu`, ...) went on to from_pretrained, whose error
        # was reported as a broken checkpoint; `meta` loaded weightless and generated garbage.
        raise ModelError(f"device {device!r} requested but no {parsed.type} device is available",
                         hint='use "cpu", "cuda", "cuda:N" or "auto"')
    return str(parsed)


def _device_type_available(kind: str) -> bool:
    """Whether this PyTorch can run on devices of type `kind` here (`torch.mps.is_available()`, ...)."""
    import torch

    module = getattr(torch, kind, None)
    return callable(getattr(module, "is_available", None)) and bool(module.is_available())


def resolve_dtype(dtype: Any, device: str) -> Any:
    """bf16 on CUDA (fp16 where bf16 is not native), fp32 on CPU, unless the caller or `PA_DTYPE` says.

    Native only: `is_bf16_supported()` also counts the emulated bf16 of pre-Ampere GPUs (T4, V100),
    which runs without tensor cores and which vLLM refuses. `PA_DTYPE` is how a user chooses for
    every stage (no stage takes a dtype): fp32 where fp16 overflows on such a GPU, or to debug.
    """
    import os

    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    from_env = dtype is None and bool(os.environ.get(DTYPE_ENV, "").strip())
    given = os.environ[DTYPE_ENV] if from_env else dtype
    wanted = (given or "auto").strip().lower()
    if wanted == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.float32
    if wanted not in _DTYPES:
        where = f"{DTYPE_ENV}={given}" if from_env else f"dtype {given!r}"
        raise InvalidInputError(f"unknown {where}", hint='use "bf16", "fp16", "fp32" or "auto"')  # exit 2, as PA_PACKS_PATH
    return getattr(torch, _DTYPES[wanted])


def check_device_and_dtype(device: str | None) -> None:
    """Refuse a bad `--device` or `PA_DTYPE` before a stage begins. Found only when the stage loaded
    its model, either marked the stage failed in run.json (a finished run's too, whose next stage
    then refused its files) or left a run of nothing in a new directory."""
    resolve_dtype(None, resolve_device(device))


def numerics(device: Any, dtype: Any) -> dict[str, str]:
    """The device type and precision a result was computed in, as a resumable job records them: bf16
    on a GPU samples, scores and judges otherwise than fp32 on a CPU, and a job resumed under other
    numerics must not mix the two in one ranking or rate."""
    import torch

    return {"device": torch.device(str(device)).type, "dtype": str(dtype)}


def expected_numerics(device: str | None) -> dict[str, str]:
    """`numerics` of a model not loaded yet, as `load_model(device=device)` would load it: a resumable job
    keys what it keeps before (or without) loading its model."""
    where = resolve_device(device)
    return numerics(where, resolve_dtype(None, where))


DTYPE_ENV = "PA_DTYPE"
# What to do when a model's logits overflow to NaN or infinity, whichever stage finds them.
OVERFLOW_HINT = (f"the model overflowed (float16 weights often do): run with {DTYPE_ENV}=bf16 (a GPU of compute "
                 f"capability 8.0 or more) or {DTYPE_ENV}=fp32, or with --device cpu")


@contextmanager
def _load_errors(ref: ModelRef) -> Iterator[None]:
    """Turn transformers/huggingface_hub/safetensors loading failures into a `ModelError` with a fix."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise _model_error(ref, exc) from None
    except ImportError as exc:
        raise _missing_package_error(ref, exc) from None


def _missing_package_error(ref: ModelRef, exc: ImportError) -> ModelError:
    """A model whose code needs a package not installed here (Gemma 3n's vision tower needs timm), as a ModelError:
    transformers raises ImportError for it, which escaped from `pa` as a traceback from inside from_pretrained."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    command = re.search(r"`(pip install [^`]+)`", text)
    install = f"run `{command.group(1)}`" if command else "install the package named above"
    return ModelError(
        f"could not load the model {ref}: {text.split('. ')[0].removesuffix('.')}",
        file=ref.location if ref.kind == "local" else "",
        hint=f"{install} in the environment policyalign runs in, then run again",
    )


def _offline_advice(lowered_error: str) -> str:
    """A machine without internet found that out only after huggingface_hub's retries: about 50 s
    before `pa eval` of an uncached model said so. Offline mode skips them."""
    from huggingface_hub import constants

    if "couldn't connect" not in lowered_error or constants.HF_HUB_OFFLINE:
        return ""
    return "; without internet, set HF_HUB_OFFLINE=1 to fail at once instead of retrying the Hub for about a minute"


def _refused_download(ref: ModelRef, exc: Exception) -> ModelError | None:
    """The Hub's refusal of a download, told by its error class as huggingface_hub raises it from the Hub's
    X-Error-Code, not by the status: a gated model (GatedRepo: 401 without a token, 403 for an account that has
    not been granted access), a repository missing or private to this token (RepoNotFound), or another 401/403
    (a fine-grained token without read access). Every 401 and 403 read as "gated: accept its license", a fix
    that cannot work for a private repository or a token's permissions. None for anything else."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from .hub import LOGIN_HINT, causes, escaped_name, shown_endpoint

    cause = next((c for c in causes(exc) if isinstance(c, HfHubHTTPError)), None)
    status = getattr(getattr(cause, "response", None), "status_code", None)
    page = f"{shown_endpoint()}/{ref.location}"
    if isinstance(cause, GatedRepoError) and status == 403:
        return ModelError(f"{ref} is gated on the Hugging Face Hub and the token's account has not been granted "
                          "access (403 Forbidden)",
                          hint=f"accept its license (ask for access) at {page} while logged in as that account "
                               "(some authors approve each request), then run again")
    if isinstance(cause, GatedRepoError):
        return ModelError(f"{ref} is gated on the Hugging Face Hub and was asked for without a token "
                          f"({'401 Unauthorized' if status == 401 else status})",
                          hint=f"accept its license at {page}, then {LOGIN_HINT} with that account's token")
    if isinstance(cause, RepositoryNotFoundError):
        return ModelError(f"the Hugging Face Hub has no model {ref.location} that this token may read (Repository "
                          "Not Found: the name is wrong, or the repository is private)",
                          hint="check the name; for a private repository, use a token of an account that can read "
                               f"it: {LOGIN_HINT}")
    if status in (401, 403):
        said = escaped_name(" ".join((getattr(cause, "server_message", None) or "").split()))
        return ModelError(f"the Hugging Face Hub refused the download of {ref} ({status}"
                          + (f": {said})" if said else ")"),
                          hint="use a token that may read the repository (a fine-grained token needs read access "
                               f"to it): {LOGIN_HINT}")
    return None


def _model_error(ref: ModelRef, exc: Exception) -> ModelError:
    text = str(exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    if ref.kind == "hub" and isinstance(exc, OSError):  # transformers wraps every Hub failure in OSError
        from .hub import INVALID_TOKEN, LOGIN_HINT

        lowered = text.lower()
        if INVALID_TOKEN.lower() in lowered:  # its 401 said "gated: accept its license", of a public model too
            return ModelError(f"the Hub rejected the token (401 Unauthorized) while downloading {ref}",
                              hint=f"the token in HF_TOKEN (or the cached login) is not valid: {LOGIN_HINT} with a "
                                   "valid one, or unset HF_TOKEN to download a public model without one")
        if refused := _refused_download(ref, exc):
            return refused
        return ModelError(
            f"{ref} is not in the local Hugging Face cache and could not be downloaded: {detail}",
            hint=(
                f"on a machine with internet access run `hf download {ref.location}"
                + (f" --revision {ref.revision}" if ref.revision else "")
                + "` (`huggingface-cli download ...` with huggingface_hub < 1.0) and copy the cache"
                " (HF_HOME) here, or pass a local directory that holds config.json" + _offline_advice(lowered)
            ),
        )
    return ModelError(
        f"could not load the model {ref}: {detail}", file=ref.location if ref.kind == "local" else "",
        hint="check that it is a complete transformers checkpoint (config.json, weights, tokenizer) "
        "and that there is enough memory for it",
    )


def load_model(
    name_or_ref: str | ModelRef,
    *,
    device: str | None = None,
    dtype: Any = None,
    adapter: str | Path | None = None,
    trainable: bool = False,
    weights: bool = True,
) -> LoadedModel:
    """Load model and tokenizer for generation, scoring or training.

    The tokenizer pads on the left (batched generation appends on the right) and always has a
    pad token. Unless `trainable`, the model is in eval mode with gradients off, so inference
    stages cannot accidentally build autograd graphs. `weights=False` loads only tokenizer
    and config, for the vLLM backend, which loads the weights itself.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per stage drowns the stage progress

    ref = name_or_ref if isinstance(name_or_ref, ModelRef) else resolve_model(name_or_ref)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs = {"revision": ref.revision} if ref.revision else {}
    _check_local_config(ref)
    with _load_errors(ref):
        tokenizer = AutoTokenizer.from_pretrained(ref.location, **kwargs)
        config = AutoConfig.from_pretrained(ref.location, **kwargs)  # read once: checked, then given to the model
        if not weights:
            _prepare_tokenizer(tokenizer, None, ref)
            return LoadedModel(None, tokenizer, ref, dev, torch_dtype, config)
        _check_causal_lm(ref, config)
        model = AutoModelForCausalLM.from_pretrained(
            ref.location, config=config, dtype=torch_dtype, device_map=dev if dev != "cpu" else None, **kwargs,
        )
    if dev == "cpu":
        model = model.to(dev)
    _prepare_tokenizer(tokenizer, model, ref)
    if adapter is not None:
        _check_adapter_base(Path(adapter), ref, getattr(model.config, "_commit_hash", None))
        model = _attach_adapter(model, Path(adapter), trainable, ref)
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, ref=ref, device=dev, dtype=torch_dtype, config=model.config)


def module_skeleton(name: str) -> Any | None:
    """The model's modules without weights (on the meta device), built from its config alone, or None where
    the config cannot be had here (the stage that loads the model says why). Enough to check settings that name
    modules (LoRA targets) before synthesis and filtering run, at no cost in memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ref = resolve_model(name)
    try:
        _check_local_config(ref)
        config = AutoConfig.from_pretrained(ref.location, **({"revision": ref.revision} if ref.revision else {}))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - an early check must not refuse a model the stages themselves can report on
        return None


def _check_local_config(ref: ModelRef) -> None:
    """A local directory's config.json must hold a JSON object: transformers indexes whatever it parsed,
    so an array or a string (`[...]`, `"..."`) was a TypeError traceback from every stage that loads it.
    Malformed JSON is left to transformers, whose error `_load_errors` already words."""
    import json

    path = Path(ref.location) / "config.json"
    if ref.kind != "local" or not path.is_file():
        return
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    if not isinstance(config, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(config), "a number")
        raise ModelError(
            f"config.json holds {kind}, not the JSON object of a model's settings",
            file=str(path),
            hint="save the model's config again (`AutoConfig.from_pretrained(BASE).save_pretrained(DIR)`), "
                 "or copy config.json from the model it was made from",
        )


def _check_causal_lm(ref: ModelRef, config: Any) -> None:
    """The model must be one `AutoModelForCausalLM` loads: every stage generates and trains through it. An
    image-text model outside its mapping (Mistral Small 3.1's Mistral3, Qwen2.5-VL, LLaVA) was refused in
    transformers' words, "Unrecognized configuration class ... for AutoModelForCausalLM", under a hint to check
    the checkpoint was complete and memory sufficed. Gemma 3 and 4, whose multimodal classes are in it, load."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", None)
    if not kind or kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "auto_map", None):
        return
    architecture = (getattr(config, "architectures", None) or [MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(kind, kind)])[0]
    if kind in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelError(f"{ref} is an image-text model ({architecture}): policyalign trains text causal LMs, "
                         "which AutoModelForCausalLM loads, and it does not load this one",
                         file=ref.location if ref.kind == "local" else "",
                         hint="use the text-only model of its family (Qwen2.5-VL: Qwen2.5-Instruct; Mistral Small 3.1: "
                              "Mistral-Small-24B-Instruct-2501), or a checkpoint of its language model alone")
    raise ModelError(f"{ref} ({architecture}) is not a causal language model: AutoModelForCausalLM does not load it",
                     file=ref.location if ref.kind == "local" else "",
                     hint="policyalign aligns decoder-only chat models (Qwen, Llama, Mistral, Gemma, Phi): pass one")


def _prepare_tokenizer(tokenizer: Any, model: Any, ref: ModelRef) -> None:
    """Left padding, a pad token, and a chat template: what every stage assumes."""
    if not tokenizer("a", add_special_tokens=False)["input_ids"]:
        # transformers builds an empty tokenizer from a directory without tokenizer files (a fine-tune
        # saved with `model.save_pretrained` alone), or one of only the added tokens that
        # tokenizer_config.json lists when the vocabulary (tokenizer.json) was left behind: every
        # text would encode to nothing, and every stage would run on bare chat-template markup.
        raise ModelError(
            f"{ref} has no tokenizer files, or none holding its vocabulary (tokenizer.json, tokenizer_config.json, ...)",
            file=ref.location if ref.kind == "local" else "",
            hint="save the tokenizer of the model it was fine-tuned from beside the weights "
            "(`AutoTokenizer.from_pretrained(BASE).save_pretrained(DIR)`)",
        )
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = processor_chat_template(ref)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"{ref} has no chat template (none in tokenizer_config.json, {TEMPLATE_FILE} or {PROCESSOR_TEMPLATE_FILE})",
            file=ref.location if ref.kind == "local" else "",
            hint="policyalign works on chat models: use the instruction-tuned variant (e.g. an -Instruct or -it model), "
                 f"or save the chat model's template beside the weights as {TEMPLATE_FILE}",
        )
    if leaves_out_user_text(tokenizer):
        raise ModelError(
            f"the chat template of {ref} renders a user turn without its text, given as a string or as a text part: "
            "every prompt's text would be left out of what the model reads",
            file=ref.location if ref.kind == "local" else "",
            hint="use a copy of the model directory with a chat template that renders plain-text content, "
                 f"saved as {TEMPLATE_FILE} (its text-only chat variant's, if it has one)",
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"{ref} has neither a pad nor an EOS token", hint="use a chat model with a complete tokenizer")
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


# Where a model ships its chat template besides tokenizer_config.json: the file AutoTokenizer reads (newer
# transformers save it so), and the one only a multimodal model's processor reads (AutoTokenizer does not).
TEMPLATE_FILE, PROCESSOR_TEMPLATE_FILE = "chat_template.jinja", "chat_template.json"


def processor_chat_template(ref: ModelRef) -> str | None:
    """The chat template in the model's chat_template.json (`{"chat_template": "..."}`), or None without that file.

    Multimodal chat models (LLaVA and others) ship their template only there, for their processor: AutoTokenizer
    loaded none, and `pa` refused the model as having no chat template, telling its user to find an -Instruct variant
    of what was one. Read from the model directory, or fetched and cached from the Hub as from_pretrained does."""
    from transformers.utils import cached_file

    from .io import read_json

    found = cached_file(ref.location, PROCESSOR_TEMPLATE_FILE, revision=ref.revision,
                        _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    if found is None:
        return None
    data = read_json(found)
    template = data.get("chat_template") if isinstance(data, dict) else None
    if not isinstance(template, str) or not template.strip():
        raise ModelError(f"{PROCESSOR_TEMPLATE_FILE} holds no chat template", file=str(found), where="chat_template",
                         hint='the file must be a JSON object {"chat_template": "<the Jinja template>"}; or save '
                              f"the template itself as {TEMPLATE_FILE} beside it")
    return template


def _check_adapter_base(adapter: Path, ref: ModelRef, commit: str | None) -> None:
    """An adapter whose adapter_config.json pins its Hub base at a commit (`provenance.name_base_model`)
    is refused on another commit of that base: after `main` moved, `--model org/name` loads the new
    weights, and the adapter's results on them were reported as the adapter's, without a word."""
    from .io import read_json

    path = adapter / "adapter_config.json"
    config = read_json(path) if ref.kind == "hub" and path.is_file() else None
    if not isinstance(config, dict) or not isinstance(commit, str):
        return
    trained_on, base = config.get("revision"), str(config.get("base_model_name_or_path") or "")
    if isinstance(trained_on, str) and _COMMIT.match(trained_on) and base.lower() == ref.location.lower() \
            and trained_on != commit:
        raise ModelError(
            f"adapter {adapter} was trained on {base} at commit {trained_on}, but {ref} loads commit {commit}",
            file=str(path), hint=f"load the base it was trained on: --model {base}@{trained_on} "
                                 f"(`hf download {base} --revision {trained_on}` if it is not in the cache)")


def check_adapter_dir(adapter: Path) -> None:
    """Refuse a path that holds no PEFT adapter (missing, a file, no config, no weights). Called before the
    base model loads too (`evaluate`): a mistyped --adapter was noticed only once a real model had loaded."""
    hint = "pass the directory a distill run wrote (RUN_DIR/adapter) or one saved with PEFT"
    if not adapter.is_dir():
        # a path that is not there was "no adapter_config.json in adapter directory X", as if X existed; a path
        # mistyped is invalid input (exit 2), as a --model or run directory that is not there (it was 1)
        problem = f"{adapter} is a file, not an adapter directory" if adapter.exists() else \
            f"adapter directory not found: {adapter}"
        raise InvalidInputError(problem, file=str(adapter), hint=_published_hint(adapter) or hint)
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"no adapter_config.json in adapter directory {adapter}", file=str(adapter), hint=hint)
    if not any(adapter.glob("adapter_model.*")):  # PEFT would look for them on the Hub: "Repo id must be ..."
        raise ModelError(
            f"no adapter weights (adapter_model.safetensors) in adapter directory {adapter}", file=str(adapter),
            hint="the directory holds an adapter's config but not its weights: train it again (`pa apply`, "
                 "or `pa distill RUN_DIR --resume` for a run's adapter) or copy the whole directory",
        )


def _published_hint(adapter: Path) -> str | None:
    """For an --adapter that is not there but reads as a Hub repository (`org/name[@REV]`, as a model card or
    `pa pull --pack` names it): pull it first. Only "pass the directory a distill run wrote" was said."""
    base, _, revision = str(adapter).partition("@")
    if adapter.exists() or not _HUB_ID.match(base) or not re.fullmatch(r"[\w./-]*", revision):
        return None
    return (f"--adapter takes a directory; if {adapter} is a published adapter, pull it first: `pa pull {adapter}` "
            "(it verifies the adapter and prints the `pa eval` command with the directory it put it in)")


def _attach_adapter(model: Any, adapter: Path, trainable: bool, ref: ModelRef) -> Any:
    """Wrap the base model with a local PEFT adapter (trainable when training continues)."""
    check_adapter_dir(adapter)
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    except SafetensorError as exc:  # a truncated or damaged weights file was a traceback
        raise ModelError(
            f"could not load adapter {adapter}: its weights file is damaged or incomplete ({exc})", file=str(adapter),
            hint="copy or download the adapter directory again, or train it again",
        ) from None
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _adapter_load_error(adapter, ref, exc) from None


def _adapter_load_error(adapter: Path, ref: ModelRef, exc: Exception) -> ModelError:
    """Why an adapter did not load. One trained on a base of other shapes (`pa eval --model other --adapter
    runs/x/adapter`) was PEFT's forty lines of "size mismatch for ..." and "check that the adapter was
    trained for this base model", never naming the base it was trained on (adapter_config.json records it)."""
    if "size mismatch" not in str(exc):
        return ModelError(f"could not load adapter {adapter}: {exc}", file=str(adapter),
                          hint="check that the adapter was trained for this base model")
    from .io import read_json

    path = adapter / "adapter_config.json"
    try:
        config = read_json(path)
    except PolicyAlignError:
        config = None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    trained = f"it was trained on {base}" if base else "it was trained on another model"
    return ModelError(
        f"adapter {adapter} does not fit {ref.name}: its layers' shapes are another base model's ({trained})",
        file=str(path), where="/base_model_name_or_path" if base else "",
        hint=f"evaluate it on the base it was trained on: --model {base}" if base
        else "pass the base model the adapter was trained on with --model")


# --------------------------------------------------------------------------- context


def max_context(loaded: LoadedModel) -> int:
    """Most tokens (prompt + completion) the model handles: the smaller of config and tokenizer."""
    config = loaded.config if loaded.config is not None else loaded.model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    limits = [
        value
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
        if isinstance(value := getattr(config, key, None), int) and value > 0
    ]
    tokenizer_max = getattr(loaded.tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 10_000_000:  # HF uses 1e30 for "unset"
        limits.append(tokenizer_max)
    if not limits:
        raise ModelError(f"{loaded.ref} does not declare its context length", hint="set max_position_embeddings in config.json")
    return min(limits)


def check_fits(loaded: LoadedModel, n_tokens: int, what: str, *, file: str = "", where: str = "") -> None:
    """Raise a `ModelError` when `what` (e.g. "policy + prompt") needs more than the context;
    `file`/`where` name the record, so one over-long item among thousands can be found and fixed."""
    limit = max_context(loaded)
    if n_tokens > limit:
        raise ModelError(
            f"{what} needs {n_tokens} tokens but {loaded.ref} fits at most {limit}", file=file, where=where,
            hint="shorten the policy or the prompts, lower max_new_tokens, or use a model with a longer context",
        )


# --------------------------------------------------------------------------- CPU threads

SMALL_MODEL_PARAMS = 20_000_000


@contextmanager
def cpu_threads(loaded: LoadedModel) -> Iterator[None]:
    """Run a small model on one CPU thread while it works.

    Its matrices are too small to split across cores, and OpenMP workers that spin-wait for
    each other collapse when the cores are shared: measured on a busy 2-core machine, 16
    greedy tiny generations took 11 s with 2 threads and 0.18 s with 1.
    """
    import torch

    small = loaded.device == "cpu" and sum(p.numel() for p in loaded.model.parameters()) < SMALL_MODEL_PARAMS
    before = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)


def base_weights(model: Any) -> Callable[[], Any]:
    """A context-manager factory showing the base model: PEFT's `disable_adapter` when the model
    carries an adapter, else a no-op (the model *is* the base). Drift, the internalization metric
    and the trainer's `base` teacher all read the base through the same weights this way."""
    from contextlib import nullcontext

    if hasattr(model, "peft_config") and hasattr(model, "disable_adapter"):
        return model.disable_adapter
    return nullcontext


def unwrapped(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (the model itself when there is none): its
    own `forward` signature, config and submodules, which the wrapper hides behind **kwargs."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


MERGE_BUDGET = 0.25  # merged copies may add at most this fraction of the model's weight bytes


@contextmanager
def merged_adapter(model: Any) -> Iterator[bool]:
    """Decode with the active LoRA adapter folded into its base layers; yields whether it did.

    An unmerged LoRA linear runs three matmuls, a dropout and a scale where a merged one runs
    one, and decoding small batches is bound by exactly that per-call overhead. So each LoRA
    layer is replaced, for the duration, by its base linear holding W + BA. The merged weights
    are new tensors swapped in and the originals swapped back: merging in place and subtracting
    afterwards would not give bf16 base weights back bit for bit, and the base is also the
    teacher. Nothing is merged when the copies would exceed `MERGE_BUDGET` of the weights
    (e.g. LoRA on every linear of a large model), or for LoRA variants other than plain linear
    LoRA (DoRA, embeddings, convolutions), whose merge is not W + BA.
    """
    import torch

    found = _mergeable_lora_layers(model)
    swapped: list[tuple[Any, str, Any, Any, Any]] = []
    try:
        with torch.no_grad():
            for parent, name, layer in found:
                base = layer.get_base_layer()
                swapped.append((parent, name, layer, base, base.weight.data))
                base.weight.data = base.weight.data + layer.get_delta_weight(model.active_adapter).to(base.weight.dtype)
                setattr(parent, name, base)
        yield bool(found)
    finally:
        for parent, name, layer, base, original in reversed(swapped):
            setattr(parent, name, layer)
            base.weight.data = original


def _mergeable_lora_layers(model: Any) -> list[tuple[Any, str, Any]]:
    """(parent, attribute, LoRA layer) for `merged_adapter`, or [] when merging is unsafe or too costly."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    if not hasattr(model, "peft_config") or not isinstance(getattr(model, "active_adapter", None), str):
        return []
    active = model.active_adapter
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, LoraLayer)]
    plain = all(
        isinstance(layer, LoraLinear) and not layer.merged and not layer.disable_adapters
        and layer.active_adapters == [active] and active in layer.lora_A and not layer.use_dora.get(active, False)
        and not getattr(layer, "lora_bias", {}).get(active, False)
        for _, _, layer in found
    )
    if not found or not plain:
        return []
    # A weight held twice (a LoRA'd lm_head tied to the input embeddings) would merge into both
    # places; an empty one is a sharded placeholder (DeepSpeed ZeRO-3) with nothing to merge into.
    holders = Counter(p.data_ptr() for _, p in model.named_parameters(remove_duplicate=False))
    if any(w.numel() == 0 or holders[w.data_ptr()] > 1 for w in (layer.get_base_layer().weight for _, _, layer in found)):
        return []
    extra = sum(layer.get_base_layer().weight.nbytes for _, _, layer in found)
    total = sum(p.nbytes for p in model.parameters())
    return found if extra <= MERGE_BUDGET * total else []
