"""The model factory: char tokenizer, encoding masks, save/load round trips, teacher-forced = greedy exact match."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lhas_ray.config import ModelConfig
from lhas_ray.model import build_model, encode, load_pretrained, save_pretrained
from lhas_ray.scoring.features import forward_stats


def test_encode_masks_everything_but_the_answer():
    _, tok = build_model(ModelConfig(), 0)
    enc = encode(tok, ["rv:abc=", "ad:1+2="], ["cba", "3"], max_length=32)
    labels, ids = enc["labels"], enc["input_ids"]
    assert tok.decode(ids[0][enc["attention_mask"][0].bool()]) == "rv:abc=cba<eos>"
    assert tok.decode(labels[0][labels[0] != -100]) == "cba<eos>"
    assert tok.decode(labels[1][labels[1] != -100]) == "3<eos>"
    assert (ids[1][enc["attention_mask"][1] == 0] == tok.pad_token_id).all()


def test_encode_truncates_to_max_length():
    _, tok = build_model(ModelConfig(), 0)
    enc = encode(tok, ["x" * 50], ["y"], max_length=16)
    assert enc["input_ids"].shape == (1, 16) and (enc["labels"] == -100).all()


def test_save_and_load_round_trip(tmp_path):
    model, tok = build_model(ModelConfig(), 3)
    save_pretrained(model, tok, str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    loaded, tok2 = load_pretrained(str(tmp_path / "ckpt"))
    enc = encode(tok, ["st:cab="], ["abc"], 32)
    assert tok2("st:cab=")["input_ids"] == tok("st:cab=")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, loaded(**enc).logits)


def _greedy_exact_match(model, tok, prompt: str, answer: str) -> bool:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    target = tok(answer + tok.eos_token)["input_ids"]
    with torch.no_grad():
        for _ in target:
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, -len(target) :].tolist() == target


def test_teacher_forced_exact_match_equals_greedy_decoding():
    # a model that gets some but not all answers right: a short fit on "copy"
    torch.manual_seed(0)
    model, tok = build_model(ModelConfig(max_length=32), 0)
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcd"), size=rng.integers(1, 4))) for _ in range(64)]
    prompts, answers = [f"cp:{w}=" for w in words], words
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = encode(tok, prompts, answers, 32)
    for _ in range(60):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    stats = forward_stats(model, batch, want_emb=False)
    greedy = np.array([_greedy_exact_match(model, tok, p, a) for p, a in zip(prompts, answers, strict=True)])
    assert 0 < greedy.sum() < len(greedy), greedy.sum()  # mixed outcomes, so equality is informative
    np.testing.assert_array_equal(stats["correct"], greedy)


def test_token_accuracy_is_the_share_of_answer_tokens_predicted():
    model, tok = build_model(ModelConfig(max_length=32), 1)
    model.eval()
    prompts, answers = ["rv:abcd=", "cp:ab=", "ad:12+3="], ["dcba", "ab", "15"]
    batch = encode(tok, prompts, answers, 32)
    stats = forward_stats(model, batch, want_emb=False)
    with torch.no_grad():
        pred = model(**batch).logits.argmax(-1)[:, :-1]
    target = batch["labels"][:, 1:]
    for i in range(3):
        mask = target[i] != -100
        expected = (pred[i][mask] == target[i][mask]).float().mean().item()
        assert stats["token_acc"][i] == pytest.approx(expected)
        assert stats["correct"][i] == (expected == 1.0)


def test_pad_tokens_picks_rows_of_flat_ids_by_hand():
    """Rows 2, 0, 2 of three hand-made rows, max_length 4: prompt then answer, truncated, padded with 9, labels only on
    the answer, in the order asked (row 2 twice)."""
    from lhas_ray.model import Tokens, pad_tokens

    # row 0: prompt [1, 2], answer [3]; row 1: prompt [4], answer [5, 6]; row 2: prompt [7, 8, 10], answer [11, 12]
    tokens = Tokens(
        np.array([1, 2, 4, 7, 8, 10], np.int32), np.array([0, 2, 3, 6]), np.array([3, 5, 6, 11, 12], np.int32),
        np.array([0, 1, 3, 5]),
    )  # fmt: skip
    got = pad_tokens(tokens, np.array([2, 0, 2]), pad_id=9, max_length=4)
    assert got["input_ids"].tolist() == [[7, 8, 10, 11], [1, 2, 3, 9], [7, 8, 10, 11]]
    assert got["labels"].tolist() == [[-100, -100, -100, 11], [-100, -100, 3, -100], [-100, -100, -100, 11]]
    assert got["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]
    narrow = pad_tokens(tokens, np.array([1]), pad_id=9, max_length=4)  # as wide as its longest row
    assert narrow["input_ids"].tolist() == [[4, 5, 6]] and narrow["labels"].tolist() == [[-100, 5, 6]]
