"""LoRA through peft on a tiny Llama (the SmolLM2 family): only adapters train, and checkpoints round-trip."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft", reason="LoRA needs peft (pip install peft)")

from transformers import AutoModelForCausalLM  # noqa: E402

from lhas_ray.lora import (  # noqa: E402
    apply_lora,
    is_lora,
    load_adapter,
    lora_parameter_names,
    save_adapter,
    save_merged,
)
from tests.helpers import tiny_llama  # noqa: E402

# peft calls a transformers API that transformers deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

IDS = torch.tensor([[5, 9, 3, 7, 1, 2], [4, 4, 8, 6, 2, 0]])


def train_a_little(model: torch.nn.Module, steps: int = 3) -> None:
    """A few AdamW steps so lora_B leaves zero and the adapters change the output."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_only_adapters_train_and_get_gradients():
    model = apply_lora(tiny_llama(), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sorted(trainable) == sorted(lora_parameter_names(model))
    assert len(trainable) == 2 * 2 * 2  # layers x (q, v) x (A, B)
    assert is_lora(model)

    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    # lora_B starts at zero, so its gradient is the one that is non-zero at step 0
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_default_targets_follow_the_model_type():
    model = apply_lora(tiny_llama(), r=2)
    names = lora_parameter_names(model)
    assert any("q_proj" in n for n in names) and any("v_proj" in n for n in names)
    assert not any("mlp" in n for n in names)


def test_bad_target_modules_name_the_model():
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        apply_lora(tiny_llama(), r=2, target_modules=["no_such_proj"])


def test_merged_checkpoint_loads_with_plain_from_pretrained(tmp_path):
    model = apply_lora(tiny_llama(), r=4, alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])
    train_a_little(model)
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    save_merged(model, None, tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not is_lora(loaded)
    with torch.no_grad():
        got = loaded(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert is_lora(model)  # merging for the save left the live model adapted


def test_adapter_round_trip(tmp_path):
    model = apply_lora(tiny_llama(seed=1), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    train_a_little(model)
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    restored = load_adapter(tiny_llama(seed=1), tmp_path / "adapter").eval()
    with torch.no_grad():
        got = restored(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_llama(), tmp_path / "nothing-here")


def test_gradient_features_take_adapters_only_the_last_blocks_by_default():
    from lhas_ray.scoring.features import per_example_grads, select_grad_params

    model = apply_lora(tiny_llama(), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    last = select_grad_params(model, ["last_block", "lm_head"])  # the scoring default
    assert sorted(last) == sorted(n for n in lora_parameter_names(model) if ".layers.1." in n)
    assert sorted(select_grad_params(model, ["all"])) == sorted(lora_parameter_names(model))  # LESS
    with pytest.raises(ValueError, match="none of those parameters is a LoRA adapter"):
        select_grad_params(model, ["lm_head"])

    train_a_little(model)  # lora_B non-zero, so lora_A's gradients are too
    batch = {"input_ids": IDS, "labels": IDS}
    got = per_example_grads(model, last, batch)
    for i in range(len(IDS)):  # one plain backward per example
        model.zero_grad()
        model(input_ids=IDS[i : i + 1], labels=IDS[i : i + 1]).loss.backward()
        for name, p in last.items():
            torch.testing.assert_close(got[name][i], p.grad, atol=1e-5, rtol=1e-4)
