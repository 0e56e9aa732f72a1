"""General ability with lm-evaluation-harness (evaluation.lm_eval): the LM wrapper against direct forward passes, a
custom multiple-choice task on a local jsonl, the rows and trajectory metrics it gives, and bad input refused.

The protocol end to end (lm_eval/<task> rows for the base model and every stage) is checked by
``test_protocol.py::test_per_seed_data_differs_across_seeds_and_is_shared_within_one``, whose run has the task on.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lm_eval.api.instance import Instance

from lhas_ray.cli import main
from lhas_ray.config import PACKAGED_CONFIGS
from lhas_ray.config.lmeval import LMEvalConfig
from lhas_ray.config.sections import ModelConfig
from lhas_ray.evaluation.lm_eval import TorchLM, evaluate_lm_tasks, result_rows, task_manager
from lhas_ray.evaluation.metrics import trajectory_metrics
from lhas_ray.model import build_model
from tests.helpers import write_mc_task

MAX_LEN = 16


@pytest.fixture(scope="module")
def tiny():
    """A tiny GPT-2 with the character tokenizer whose positions end at MAX_LEN (longer inputs must be cut)."""
    model, tok = build_model(ModelConfig(n_layer=1, n_embd=32, n_head=2, max_length=MAX_LEN), seed=3)
    return model.eval(), tok


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def direct_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) from one unbatched forward pass and log_softmax: the last MAX_LEN + 1 tokens of
    context + continuation (an empty context is the EOS token), summed over the continuation's tokens. As lm-eval
    documents it, a context's trailing spaces belong to the continuation (they are scored too)."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped) :] + continuation
    ctx = _ids(tok, context) if context else [tok.eos_token_id]
    cont = _ids(tok, continuation)
    seq = (ctx + cont)[-(MAX_LEN + 1) :]
    k = min(len(cont), len(seq) - 1)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([seq[:-1]])).logits[0].log_softmax(-1)
    positions = range(len(seq) - 1 - k, len(seq) - 1)
    ll = sum(float(logp[p, seq[p + 1]]) for p in positions)
    return ll, all(int(logp[p].argmax()) == seq[p + 1] for p in positions)


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def test_loglikelihood_equals_a_direct_forward_pass(tiny):
    """Batched (3 per batch, sorted by length, right-padded) against one forward pass per request: contexts that fit,
    one longer than the model's positions (cut from the left), an empty one (the EOS token) and trailing spaces."""
    model, tok = tiny
    pairs = [
        ("rv:abc=", "cba"),
        ("sr:dbca=", "abcd"),
        ("a much longer context than sixteen characters=", "xyz"),
        ("", "hello"),
        ("cp:ab= ", "ab"),
        ("x", "a continuation longer than the window"),
        ("add:12+3=", "15"),
    ]
    lm = TorchLM(model, tok, max_length=MAX_LEN, batch_size=3)
    got = lm.loglikelihood(_requests("loglikelihood", pairs))
    want = [direct_loglikelihood(model, tok, c, t) for c, t in pairs]
    assert [g[1] for g in got] == [w[1] for w in want]
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-5, atol=1e-5)
    assert all(g[0] < 0 for g in got)


def test_rolling_loglikelihood_scores_every_token_once(tiny):
    """A string that fits is every token given EOS + the tokens before it; a longer one adds a second window that
    predicts its last tokens from the MAX_LEN tokens before them (lm-eval's rolling windows)."""
    model, tok = tiny
    short, long = "abcdefgh", "abcdefghijklmnopqrs"  # 8 tokens; 19 = MAX_LEN + 3
    lm = TorchLM(model, tok, max_length=MAX_LEN, batch_size=4)
    got = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(short,), (long,)]))
    first, _ = direct_loglikelihood(model, tok, "", long[:MAX_LEN])
    second, _ = direct_loglikelihood(model, tok, long[:-3], long[-3:])  # context cut to the MAX_LEN before them
    assert got[0] == pytest.approx(direct_loglikelihood(model, tok, "", short)[0], abs=1e-5)
    assert got[1] == pytest.approx(first + second, abs=1e-5)


def test_generation_is_greedy_and_stops_at_until(tiny):
    """Against transformers' own greedy generate, one prompt at a time, cut at the first stop string."""
    model, tok = tiny
    prompts = ["rv:abc=", "sr:dcba=", "q"]
    lm = TorchLM(model, tok, max_length=MAX_LEN, batch_size=2)
    got = lm.generate_until(_requests("generate_until", [(p, {"until": [], "max_gen_toks": 5}) for p in prompts]))
    for prompt, text in zip(prompts, got, strict=True):
        ids = torch.tensor([_ids(tok, prompt)])
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        want = tok.decode(out[0, ids.shape[1] :].tolist())
        assert text == want.split(tok.eos_token)[0]
    stop = got[0][2:3] or "z"
    cut = lm.generate_until(_requests("generate_until", [(prompts[0], {"until": [stop], "max_gen_toks": 5})]))
    assert cut == [got[0].split(stop)[0]]


def test_custom_task_on_a_local_jsonl_writes_lm_eval_rows(tiny, tmp_path):
    """Labels are set from the model's own choice (direct forward passes) on even docs and against it on odd ones, so
    with limit 6 the accuracy is 3/6; lm-eval's choices are scored as ' ' + choice after the prompt."""
    model, tok = tiny
    words = ["ab", "abc", "bca", "cab", "dcb", "bd", "adc", "ca"]
    docs = [{"prompt": f"rv:{w}=", "choices": [w[::-1], w, "".join(sorted(w))]} for w in words]
    expected = []
    for i, d in enumerate(docs):
        ll = [direct_loglikelihood(model, tok, d["prompt"], " " + c)[0] for c in d["choices"]]
        best = int(np.argmax(ll))
        d["label"] = best if i % 2 == 0 else (best + 1) % 3
        expected.append(best == d["label"])
    include = write_mc_task(tmp_path / "tasks", docs)
    lm_cfg = LMEvalConfig(tasks=["tiny_mc"], include_path=include, include_defaults=False, limit=6, batch_size=4)
    rows = evaluate_lm_tasks(model, tok, lm_cfg, task_manager(lm_cfg), MAX_LEN)
    got = {(r["eval_set"], r["metric"]): r["value"] for r in rows}
    assert set(got) == {("lm_eval/tiny_mc", "accuracy"), ("lm_eval/tiny_mc", "acc")}
    assert got["lm_eval/tiny_mc", "accuracy"] == got["lm_eval/tiny_mc", "acc"] == np.mean(expected[:6]) == 0.5
    assert all(r["eval_stage"] is None and r["skill"] == "all" for r in rows)
    # all 8 docs: 4 of 8; global random state untouched by the evaluation
    state = torch.random.get_rng_state()
    full = LMEvalConfig(tasks=["tiny_mc"], include_path=include, include_defaults=False)
    assert evaluate_lm_tasks(model, tok, full, task_manager(full), MAX_LEN)[0]["value"] == 0.5
    assert torch.equal(state, torch.random.get_rng_state())


def test_rows_are_one_eval_set_per_top_level_task_or_group():
    results = {
        "results": {
            "grp": {"alias": "grp", "acc,none": 0.5, "acc_stderr,none": "N/A"},
            "grp_a": {"alias": " - a", "acc,none": 0.4, "acc_stderr,none": 0.1},
            "gen": {"alias": "gen", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1},
        },
        "group_subtasks": {"grp": ["grp_a"]},
    }
    rows = {(r["eval_set"], r["metric"]): r["value"] for r in result_rows(results)}
    assert rows == {
        ("lm_eval/grp", "accuracy"): 0.5,
        ("lm_eval/grp", "acc"): 0.5,
        ("lm_eval/gen", "accuracy"): 0.25,
        ("lm_eval/gen", "exact_match,strict-match"): 0.25,
    }


def test_lm_eval_trajectory_metrics_by_hand():
    """lm_eval_acc = mean over tasks after stage t; lm_eval_delta = mean over tasks of (after t - base)."""
    rows = []
    for stage, (a, b) in enumerate([(0.6, 0.2), (0.5, 0.4), (0.3, 0.3)]):
        rows += [("s", 0, stage, f"eval/stage{j}", j, "all", "accuracy", 0.5) for j in (1, 2)]
        rows += [
            ("s", 0, stage, "lm_eval/a", None, "all", "accuracy", a),
            ("s", 0, stage, "lm_eval/b", None, "all", "accuracy", b),
        ]
        rows += [("s", 0, stage, "lm_eval/a", None, "all", "acc_norm", 0.9)]  # not accuracy: not read
    cols = ["selector", "seed", "stage", "eval_set", "eval_stage", "skill", "metric", "value"]
    traj = trajectory_metrics(pd.DataFrame(rows, columns=cols))
    got = traj[traj.metric.str.startswith("lm_eval")].set_index(["metric", "stage"])["value"]
    assert got["lm_eval_acc", 1] == pytest.approx(0.45) and got["lm_eval_acc", 2] == pytest.approx(0.3)
    # stage 1: (0.5 - 0.6 + 0.4 - 0.2) / 2 = 0.05; stage 2: (0.3 - 0.6 + 0.3 - 0.2) / 2 = -0.1
    assert got["lm_eval_delta", 1] == pytest.approx(0.05) and got["lm_eval_delta", 2] == pytest.approx(-0.1)
    no_lm = trajectory_metrics(pd.DataFrame([r for r in rows if not r[3].startswith("lm_eval")], columns=cols))
    assert not no_lm.metric.str.startswith("lm_eval").any()


# --- bad input: refused by the CLI with its field path before Ray starts ------------------------------------------
DEMO = yaml.safe_load((PACKAGED_CONFIGS / "demo.yaml").read_text())


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def refuse(*a, **k):
        raise AssertionError("Ray was started for a config that should have been refused")

    monkeypatch.setattr(ray, "init", refuse)


def _lm_eval(tmp_path, **fields) -> dict:
    include = write_mc_task(tmp_path / "tasks", [{"prompt": "a=", "choices": ["b", "c"], "label": 0}])
    return {"tasks": ["tiny_mc"], "include_path": include, "include_defaults": False, **fields}


def _no_lm_eval(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a)
    )


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"tasks": ["tiny_mx"]}, "evaluation.lm_eval.tasks.0", "task 'tiny_mx' is not in include_path"),
        ({"tasks": ["tiny_mc", "nope"]}, "evaluation.lm_eval.tasks.1", "'nope'"),
        ({"include_path": "/no/such/tasks"}, "evaluation.lm_eval.include_path", "is not a folder"),
        ({"tasks": []}, "evaluation.lm_eval.tasks", "at least 1"),
        ({"limt": 5}, "evaluation.lm_eval.limt", "unknown key"),
        ({"limit": 0}, "evaluation.lm_eval.limit", "greater than or equal to 1"),
        ("uninstalled", "evaluation.lm_eval", "lm-eval package is not installed; pip install 'lhas_ray[lmeval]'"),
    ],
    ids=[
        "unknown-task",
        "second-task-unknown",
        "no-include-path",
        "no-tasks",
        "unknown-key",
        "zero-limit",
        "not-installed",
    ],
)
def test_bad_lm_eval_config_is_refused_before_ray(tmp_path, capsys, monkeypatch, no_ray, fields, field, reason):
    raw = copy.deepcopy(DEMO)
    if fields == "uninstalled":
        _no_lm_eval(monkeypatch)
        fields = {}
    raw.setdefault("evaluation", {})["lm_eval"] = _lm_eval(tmp_path, **fields)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert field in err and reason in err, err
    assert not out.exists()


def test_a_valid_lm_eval_config_passes_validate(tmp_path, capsys, no_ray):
    raw = copy.deepcopy(DEMO)
    raw.setdefault("evaluation", {})["lm_eval"] = _lm_eval(tmp_path, limit=10)
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_every_lm_eval_field_is_documented():
    assert all(f.description for f in LMEvalConfig.model_fields.values())
