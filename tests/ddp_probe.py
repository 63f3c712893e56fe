"""Run under `torch.distributed.run` by test_launch: one report line per rank, to check that the
ranks trained on different instructions and ended with the same adapter (DDP synchronised)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed

from policyalign.distill_settings import DistillConfig
from policyalign.io import read_jsonl
from policyalign.launch import launch_rank
from policyalign.models import cpu_threads, load_model
from policyalign.trainer import build_trainer


def main(run_dir: Path, out_dir: Path) -> None:
    rank = launch_rank()[0]
    records = read_jsonl(run_dir / "selected.jsonl")
    loaded = load_model("tiny", device="cpu", trainable=True)
    config = DistillConfig(max_steps=2, batch_size=2, max_new_tokens=8, learning_rate=1e-2, save_steps=10**6)
    with cpu_threads(loaded):
        trainer = build_trainer(loaded, "Refuse weapons requests.", records, config, out_dir / f"rank{rank}")
        seen: list[list[int]] = []
        generate = trainer._generate_transformers

        def recording(prompt_ids):  # type: ignore[no-untyped-def]
            seen.extend(prompt_ids)
            return generate(prompt_ids)

        trainer._generate_transformers = recording
        trainer.train()
    digest = hashlib.sha256()
    for name, param in sorted(trainer.model.named_parameters()):
        if "lora_" in name:
            digest.update(param.detach().cpu().numpy().tobytes())
    report = {"rank": rank, "processes": trainer.accelerator.num_processes, "adapter": digest.hexdigest(),
              "prompts": seen, "steps": trainer.state.global_step}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # exiting with the group alive aborts in gloo's threads


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
