"""Small random models of other architecture families, with tiny's tokenizer: a user's own model, offline.

transformers builds any architecture from its config with random weights; saved with tiny's tokenizer
(whose size the vocabulary matches) and a chat template of the family's kind, a directory is a local
model like any other: `load_model(str(path))`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chat_templates import NO_SYSTEM_ROLE

# Two layers: Gemma's first sliding, its second global, as Gemma 2 alternates and Gemma 3 mixes them.
_LAYERS = {"num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"]}


def _text(vocab: int, eos: int, pad: int, **extra: Any) -> dict[str, Any]:
    """A small decoder's settings, initialised as broadly as tiny so a policy prefix moves its logits."""
    return {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096, "initializer_range": 0.15,
            "eos_token_id": eos, "pad_token_id": pad, "bos_token_id": None, **_LAYERS, **extra}


def family_config(family: str) -> Any:
    """The config of a small `family` model: qwen3-next, llama4, gemma2, gemma3 (text only, the 1B kind) or gemma3-vision
    (Gemma3ForConditionalGeneration with a SigLIP tower, as gemma-3-4b-it and larger load)."""
    import transformers

    from policyalign.tiny import _token_id, _vocab_size

    vocab, eos, pad = _vocab_size(), _token_id("<|im_end|>"), _token_id("<|endoftext|>")
    if family == "qwen3-next":  # a hybrid: its first layer's cache is a recurrent state, not keys and values
        return transformers.Qwen3NextConfig(**_text(vocab, eos, pad, layer_types=["linear_attention", "full_attention"],
                                                    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                                    linear_num_value_heads=2, linear_num_key_heads=2,
                                                    linear_key_head_dim=16, linear_value_head_dim=16))
    if family == "llama4":  # text only, as Llama 4 Scout's language model: chunked attention, then a global layer
        return transformers.Llama4TextConfig(**_text(vocab, eos, pad, layer_types=["chunked_attention", "full_attention"],
                                                     attention_chunk_size=16, no_rope_layers=[1, 0], num_local_experts=2,
                                                     num_experts_per_tok=1, intermediate_size_mlp=128))
    if family == "gemma2":
        return transformers.Gemma2Config(**_text(vocab, eos, pad, sliding_window=8, final_logit_softcapping=30.0,
                                                 attn_logit_softcapping=50.0))
    text = _text(vocab, eos, pad, sliding_window=8)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**text)
    assert family == "gemma3-vision", family
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 14}
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                       image_token_index=vocab - 1, boi_token_index=vocab - 2, eoi_token_index=vocab - 3)
    config.eos_token_id, config.pad_token_id = eos, pad
    return config


def family_model(dest: Path, family: str, template: str = NO_SYSTEM_ROLE) -> Path:
    """Save a seeded random `family` model with tiny's tokenizer carrying `template` into `dest`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from policyalign.tiny import tiny_model_path

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(family_config(family)).save_pretrained(dest)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    tokenizer.chat_template = template
    tokenizer.save_pretrained(dest)
    return dest
