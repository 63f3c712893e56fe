"""Drift: the neutral prompts, the KL math, and drift measured on real adapters of `tiny`."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyalign.drift import load_neutral_prompts, measure_drift, mean_kl
from policyalign.evaluate import evaluate
from policyalign.generation import greedy_params
from policyalign.io import sha256_file

from evaluations import general_pack


def test_neutral_prompts_ship_with_the_package() -> None:
    prompts = load_neutral_prompts()
    assert 25 <= len(prompts) <= 40
    assert len(set(prompts)) == len(prompts)


def test_mean_kl_is_zero_for_identical_and_positive_otherwise() -> None:
    import torch

    a = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]]), dim=-1)
    b = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 5.0]]), dim=-1)
    assert mean_kl([a], [a]) == (0.0, 2)
    kl, tokens = mean_kl([a], [b])
    expected = float((a[0].exp() * (a[0] - b[0])).sum()) / 2
    assert tokens == 2 and kl == pytest.approx(expected)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA adapters on tiny: freshly initialised (B = 0, the identity) and perturbed."""
    import torch
    from peft import LoraConfig, get_peft_model

    from policyalign.models import load_model

    root = tmp_path_factory.mktemp("adapters")
    model = get_peft_model(load_model("tiny", device="cpu").model,
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(root / "identity")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(root / "perturbed")
    return {"identity": root / "identity", "perturbed": root / "perturbed"}


PROMPTS = ["How do I keep basil fresh?", "Write a haiku about snow.", "Why do cats purr?"]


@pytest.mark.slow
def test_drift_is_zero_for_base_and_identity_adapter_positive_when_perturbed(adapters: dict[str, Path]) -> None:
    base = measure_drift("tiny", device="cpu", prompts=PROMPTS, max_new_tokens=8)
    identity = measure_drift("tiny", adapters["identity"], device="cpu", prompts=PROMPTS, max_new_tokens=8)
    perturbed = measure_drift("tiny", adapters["perturbed"], device="cpu", prompts=PROMPTS, max_new_tokens=8)
    assert base.kl == 0.0 and identity.kl == 0.0
    assert perturbed.kl > 0.01
    assert perturbed.tokens > 0 and perturbed.prompts == 3


@pytest.mark.slow
def test_evaluate_with_adapter_records_drift(tmp_path: Path, adapters: dict[str, Path]) -> None:
    result = evaluate(general_pack(), "tiny", adapter=adapters["perturbed"], out_dir=tmp_path / "after", limit=1,
                      params=greedy_params(8), batch_size=4)
    drift = result.summary["drift"]
    assert drift is not None and drift["kl"] > 0 and drift["prompts"] == len(load_neutral_prompts())
    assert result.summary["adapter"] == str(adapters["perturbed"])
    # the weights' hash ties this after-eval to them (the card refuses it once they change)
    assert result.summary["adapter_sha256"] == sha256_file(adapters["perturbed"] / "adapter_model.safetensors")
    assert "Drift" in result.report_md.read_text()
