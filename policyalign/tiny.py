"""The built-in `tiny` model: a seeded, few-hundred-thousand-parameter Qwen2 causal LM.

Development and CI machines have no GPU and no Hub, yet every stage (synthesis, scoring,
distillation, evaluation) must run end to end. `tiny` makes that possible: a real
`Qwen2ForCausalLM` with a real byte-level BPE tokenizer and a ChatML chat template, saved to
a directory and loaded through the same `from_pretrained` code path as any Hub model.

Two parts, with different lifetimes:

* The **tokenizer** is trained once, offline, from `data/tiny/corpus.txt` by
  `python -m policyalign.tiny --build-tokenizer`, and its files are committed under
  `policyalign/data/tiny/`. Training uses Qwen2's NFC normalizer and split regex because
  `AutoTokenizer` rebuilds both in code for model_type qwen2: any other choice would make the
  ids change between the raw `tokenizers` object and the reloaded tokenizer.
* The **weights** are generated on first use from a fixed seed into the cache directory
  (`PA_CACHE_DIR` or `~/.cache/policyalign`), keyed by a content hash of the config and the
  tokenizer files, so a change to either builds a new model instead of reusing a stale one.
  The init range is large (0.15): with the usual 0.02 the logits are nearly uniform and every
  student/teacher divergence would be ~0, which would make the pipeline untestable; at 0.5
  the network is so chaotic that a policy prefix moves it ~8 nats per token and a short CPU
  distillation closes under 30% of that on held-out prompts, while at 0.15 the gap is ~0.65
  nats and 150 LoRA steps close over half of it (measured; see the distill tests).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import InvalidInputError
from .io import make_directories, sync_directory, sync_tree, write_json, write_text

DATA_DIR = Path(__file__).parent / "data" / "tiny"
CORPUS_FILE = "corpus.txt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# Bump when the weight-generation procedure changes, so old caches are not reused.
WEIGHTS_FORMAT = 1
SEED = 1234
INIT_RANGE = 0.15
BPE_VOCAB_LIMIT = 4096  # the corpus saturates first (~2.2k tokens): every word becomes one token
MAX_POSITIONS = 8192

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Markup the chat template emits for tools; added as whole tokens (not special, so decoding
# with skip_special_tokens keeps them), like Qwen2.5's <tool_call>.
MARKUP_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
DEFAULT_SYSTEM = "You are a helpful assistant."

# ChatML in the style of Qwen2.5: tools are rendered into the system turn, assistant tool calls
# as <tool_call> JSON, tool results as <tool_response> blocks inside a user turn. Arguments may
# be a dict (transformers format) or an already-serialised JSON string (OpenAI format).
CHAT_TEMPLATE = r"""{%- set default_system = '""" + DEFAULT_SYSTEM + r"""' -%}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set system_message = messages[0]['content'] -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_message = default_system -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{{- '<|im_start|>system\n' + system_message -}}
{%- if tools -%}
    {{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\n' + (tool | tojson) -}}
    {%- endfor -%}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' -}}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- for message in loop_messages -%}
    {%- if message['role'] == 'user' or message['role'] == 'system' -%}
        {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
    {%- elif message['role'] == 'assistant' -%}
        {{- '<|im_start|>assistant' -}}
        {%- if message['content'] -%}
            {{- '\n' + message['content'] -}}
        {%- endif -%}
        {%- for tool_call in message['tool_calls'] or [] -%}
            {%- if tool_call['function'] is defined -%}
                {%- set tool_call = tool_call['function'] -%}
            {%- endif -%}
            {{- '\n<tool_call>\n{"name": "' + tool_call['name'] + '", "arguments": ' -}}
            {%- if tool_call['arguments'] is string -%}
                {{- tool_call['arguments'] -}}
            {%- else -%}
                {{- tool_call['arguments'] | tojson -}}
            {%- endif -%}
            {{- '}\n</tool_call>' -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message['role'] == 'tool' -%}
        {%- if loop.first or loop.previtem['role'] != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' -}}
        {%- if loop.last or loop.nextitem['role'] != 'tool' -%}
            {{- '<|im_end|>\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- raise_exception('unknown role: ' + message['role']) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""


# --------------------------------------------------------------------------- tokenizer


def _qwen2_split_regex() -> str:
    """Qwen2's pre-tokenizer regex, taken from transformers so reloads cannot disagree."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    return PRETOKENIZE_REGEX


def train_tokenizer(corpus: Path) -> Any:
    """Train the byte-level BPE on `corpus` with Qwen2's normalizer and pre-tokenizer.

    Deterministic for a given corpus: tests/test_tiny.py rebuilds the files and compares them
    byte for byte with the committed ones.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_qwen2_split_regex()), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=BPE_VOCAB_LIMIT - len(MARKUP_TOKENS),
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    tokenizer.train_from_iterator(lines, trainer=trainer, length=len(lines))
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    return tokenizer


def _tokenizer_config(tokenizer: Any) -> dict[str, Any]:
    """tokenizer_config.json in the shape Qwen2.5 ships, so AutoTokenizer treats tiny like Qwen."""
    added = {}
    for token in (*SPECIAL_TOKENS, *MARKUP_TOKENS):
        added[str(tokenizer.token_to_id(token))] = {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": token in SPECIAL_TOKENS,
        }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": MAX_POSITIONS,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def build_tokenizer_files(out_dir: Path = DATA_DIR, corpus: Path | None = None) -> list[Path]:
    """Train the tokenizer and write the files that get committed; returns their paths."""
    corpus = corpus or DATA_DIR / CORPUS_FILE
    tokenizer = train_tokenizer(corpus)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json.loads(tokenizer.to_str())
    write_text(out_dir / "tokenizer.json", json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    write_json(out_dir / "tokenizer_config.json", _tokenizer_config(tokenizer))
    write_text(out_dir / "chat_template.jinja", CHAT_TEMPLATE)
    return [out_dir / name for name in TOKENIZER_FILES]


# --------------------------------------------------------------------------- weights


@functools.lru_cache(maxsize=4)
def _tokenizer_facts(stamp: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """(vocab size, added-token ids) of the shipped tokenizer.json; `stamp` keys the cache."""
    data = json.loads((DATA_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"]: int(t["id"]) for t in data["added_tokens"]}
    size = max([*data["model"]["vocab"].values(), *added.values()]) + 1
    return size, added


def _facts() -> tuple[int, dict[str, int]]:
    stat = (DATA_DIR / "tokenizer.json").stat()
    return _tokenizer_facts((stat.st_mtime_ns, stat.st_size))


def _token_id(token: str) -> int:
    """Id of a special token in the shipped tokenizer."""
    return _facts()[1][token]


def _vocab_size() -> int:
    """Exactly the tokenizer's size: unlike a real checkpoint's padding rows, extra rows of
    random weights would be sampled and decode to nothing."""
    return _facts()[0]


def tiny_config() -> dict[str, Any]:
    """The Qwen2 config of `tiny`: small, but with a context long enough for a real policy."""
    eos, pad = _token_id("<|im_end|>"), _token_id("<|endoftext|>")
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": _vocab_size(),
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "initializer_range": INIT_RANGE,
        "bos_token_id": None,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "dtype": "float32",
    }


def _generation_config() -> dict[str, Any]:
    """Stop at <|im_end|> or <|endoftext|>, like Qwen2.5-Instruct's generation_config."""
    return {
        "eos_token_id": [_token_id("<|im_end|>"), _token_id("<|endoftext|>")],
        "pad_token_id": _token_id("<|endoftext|>"),
    }


def cache_dir() -> Path:
    """Where generated artifacts live: `PA_CACHE_DIR`, else `~/.cache/policyalign`."""
    env = os.environ.get("PA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "policyalign"


def content_key() -> str:
    """Hash of everything the weights and files depend on: config, seed, format, tokenizer."""
    payload = {
        "format": WEIGHTS_FORMAT,
        "seed": SEED,
        "config": tiny_config(),
        "generation": _generation_config(),
        "tokenizer": {
            name: hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() for name in TOKENIZER_FILES
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _seeded_state_dict(names_shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, Any]:
    """Weights from one seeded generator, visited in sorted-name order.

    Independent of transformers' own init code (which may change between versions) and of
    the global RNG (which callers may rely on): norms are ones, everything else N(0, INIT_RANGE).
    """
    import torch

    generator = torch.Generator().manual_seed(SEED)
    state = {}
    for name, shape in sorted(names_shapes):
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape)
        else:
            state[name] = torch.empty(shape).normal_(0.0, INIT_RANGE, generator=generator)
    return state


def _write_model(out: Path) -> None:
    """Write config, generation config, weights and tokenizer files into `out`."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**tiny_config())
    with torch.device("meta"):  # only for the parameter names and shapes: no init, no RNG use
        names_shapes = [
            (name, tuple(t.shape))
            for name, t in Qwen2ForCausalLM(config).state_dict().items()
            if name != "lm_head.weight"  # tied to the embeddings, as save_pretrained would drop it
        ]
    save_file(_seeded_state_dict(names_shapes), str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    GenerationConfig(**_generation_config()).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copyfile(DATA_DIR / name, out / name)


def tiny_model_path(root: Path | None = None) -> Path:
    """Directory of the `tiny` model, generating it on first use (atomically, by rename).

    The directory name carries the content key, so concurrent builders race harmlessly: the
    first rename wins and the loser discards its copy.
    """
    models = (root or cache_dir()) / "models"
    final = models / f"tiny-{content_key()[:16]}"
    if (final / "config.json").is_file():
        return final
    try:
        make_directories(models)  # synced into its parent when new, as the model directory renamed into it
    except (NotADirectoryError, FileExistsError):  # was a traceback: PA_CACHE_DIR naming a file is a setting to fix
        raise InvalidInputError("the tiny model's cache directory cannot be made: a file is in its path", file=str(models),
                                hint="point PA_CACHE_DIR at a directory (unset, it is ~/.cache/policyalign)") from None
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=models))
    try:
        _write_model(tmp)
        sync_tree(tmp)  # its config.json is the sign it is whole: never an empty one after a power cut
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
        sync_directory(models)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> None:
    """`python -m policyalign.tiny --build-tokenizer` rewrites the committed tokenizer files."""
    parser = argparse.ArgumentParser(prog="python -m policyalign.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--build-tokenizer", action="store_true", help="train and write the tokenizer files")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="where to write them (default: the package)")
    parser.add_argument("--path", action="store_true", help="print the tiny model directory (builds it if needed)")
    args = parser.parse_args(argv)
    if args.build_tokenizer:
        for path in build_tokenizer_files(args.out):
            print(path)
    if args.path or not args.build_tokenizer:
        print(tiny_model_path())


if __name__ == "__main__":
    main()
