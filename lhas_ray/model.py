"""Model and tokenizer factory: the built-in tiny GPT-2 with a character tokenizer, or any HF causal LM by path.

Both kinds save and load through ``save_pretrained`` / ``from_pretrained`` (safetensors weights, a plain
``tokenizer.json``), so a checkpoint of the tiny default is an ordinary Hugging Face folder.
"""

from __future__ import annotations

import os
import string
from itertools import chain
from typing import NamedTuple

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from lhas_ray.config import ModelConfig
from lhas_ray.config.preflight import model_kind

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARS = string.ascii_letters + string.digits + string.punctuation + " "
BUILTIN = "tiny-gpt2"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, built from the ``tokenizers`` library so it saves as a plain tokenizer.json."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def build_model(cfg: ModelConfig, seed: int) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A fresh model and its tokenizer: tiny GPT-2 initialised from ``seed``, or a pretrained model from cfg.name."""
    if cfg.name != BUILTIN:
        from lhas_ray.pretrained import resolve_model_name

        return load_pretrained(resolve_model_name(cfg.name), cfg)
    tokenizer = char_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.max_length,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model, tokenizer


def load_pretrained(path: str, cfg: ModelConfig | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """Load a HF causal LM and tokenizer from a local folder (or a hub id on a cluster with network).

    Weights load as safetensors where present; ``torch.load`` fallbacks in transformers use ``weights_only``.
    """
    if model_kind(path) == "local" and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"model path {path!r} does not exist")
    dtype = getattr(torch, cfg.dtype) if cfg else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def with_adapters(model: torch.nn.Module, cfg: ModelConfig, seed: int | None = None) -> torch.nn.Module:
    """Fresh LoRA adapters on the model when ``model.lora`` is set (each stage trains its own); else the model.

    ``seed`` draws the adapters' initial weights without touching the global RNG, so every process that builds the
    adapters of one stage (Train ranks, scoring actors) builds the same ones."""
    if cfg.lora is None:
        return model
    from lhas_ray.lora import apply_lora

    if seed is None:
        return apply_lora(model, **cfg.lora.model_dump())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return apply_lora(model, **cfg.lora.model_dump())


def save_pretrained(model: torch.nn.Module, tokenizer, path: str) -> str:
    """Save model (safetensors) and tokenizer into one HF folder; LoRA adapters are merged into the weights first,
    so every checkpoint loads with plain ``from_pretrained`` and the next stage starts from the adapted model."""
    from lhas_ray.lora import is_lora, merge_lora

    (merge_lora(model) if is_lora(model) else model).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def encode(tokenizer, prompts: list[str], answers: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise prompt+answer+EOS, right-padded; ``labels`` are -100 except on answer tokens (and EOS).

    Accuracy and loss are on the answer only: the prompt conditions, the answer is what is learnt.
    """
    return pad_tokens(
        tokenize(tokenizer, prompts, answers), np.arange(len(prompts)), tokenizer.pad_token_id, max_length
    )


class Tokens(NamedTuple):
    """Ragged token ids of prompts and of answers + EOS, flat (int32); row i's are ``[off[i], off[i + 1])``: a few bytes
    a token where the tokeniser's lists of Python ints take about forty."""

    prompt: np.ndarray
    prompt_off: np.ndarray
    answer: np.ndarray
    answer_off: np.ndarray


def tokenize(tokenizer, prompts: list[str], answers: list[str]) -> Tokens:
    """The token ids of every row, once; ``pad_tokens`` makes batches of any of its rows."""
    eos = tokenizer.eos_token or ""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([a + eos for a in answers], add_special_tokens=False)["input_ids"]
    p_off = np.concatenate([[0], np.cumsum(np.fromiter(map(len, p_ids), dtype=np.int64, count=len(p_ids)))])
    a_off = np.concatenate([[0], np.cumsum(np.fromiter(map(len, a_ids), dtype=np.int64, count=len(a_ids)))])
    p_flat = np.fromiter(chain.from_iterable(p_ids), dtype=np.int32, count=int(p_off[-1]))
    a_flat = np.fromiter(chain.from_iterable(a_ids), dtype=np.int32, count=int(a_off[-1]))
    return Tokens(p_flat, p_off, a_flat, a_off)


def _ragged_rows(flat: np.ndarray, off: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """The tokens of ``rows`` (in that order) with, for each, its batch row and its position in the row."""
    n = off[rows + 1] - off[rows]
    batch_row = np.repeat(np.arange(len(rows)), n)
    col = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return flat[np.repeat(off[rows], n) + col].astype(np.int64), batch_row, col


def pad_tokens(tokens: Tokens, rows: np.ndarray, pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of ``rows`` of ``tokens``, as wide as its longest row (at most ``max_length``)."""
    rows = np.asarray(rows, dtype=np.int64)
    p_len = tokens.prompt_off[rows + 1] - tokens.prompt_off[rows]
    lengths = np.minimum(p_len + tokens.answer_off[rows + 1] - tokens.answer_off[rows], max_length)
    width = max(int(lengths.max()) if len(lengths) else 1, 1)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), -100, dtype=np.int64)
    # scatter the ragged token lists into the padded matrix without a loop over rows
    p_tok, p_row, p_col = _ragged_rows(tokens.prompt, tokens.prompt_off, rows)
    keep = p_col < max_length
    ids[p_row[keep], p_col[keep]] = p_tok[keep]
    a_tok, a_row, a_col = _ragged_rows(tokens.answer, tokens.answer_off, rows)
    a_col = a_col + p_len[a_row]  # an answer follows its prompt
    keep = a_col < max_length
    ids[a_row[keep], a_col[keep]] = labels[a_row[keep], a_col[keep]] = a_tok[keep]
    attention = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(attention),
        "labels": torch.from_numpy(labels),
    }
