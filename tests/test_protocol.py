"""The protocol end to end through Ray Data, Ray Train and DeepSpeed: the output contract, resume, determinism."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
import yaml

from lhas_ray.config import config_from_dict, dump_config
from lhas_ray.evaluation.accuracy import per_example
from lhas_ray.evaluation.metrics import trajectory_metrics
from lhas_ray.launch import build_suites, run_experiment
from lhas_ray.model import load_pretrained, save_pretrained
from lhas_ray.store import ResultStore
from lhas_ray.tasks.suite import build_suite
from tests.helpers import kill_tree, micro_config, write_mc_task

pytestmark = pytest.mark.slow


def test_run_writes_the_output_contract(clean_run):
    cfg, out = clean_run
    # where each Train rank ran: two processes on the one node of this session's Ray
    placed = [json.loads(open(os.path.join(out, "_workers", f"micro-group0-rank{r}.json")).read()) for r in (0, 1)]
    assert [(p["rank"], p["world_size"]) for p in placed] == [(0, 2), (1, 2)]
    assert {p["node_id"] for p in placed} == {ray.get_runtime_context().get_node_id()}  # the one node of this session
    assert placed[0]["pid"] != placed[1]["pid"]
    # a local instance has no preemptible node: Ray Train's preemption watcher (a process per fit) was not started
    from ray.util.state import list_actors

    started = list_actors(address=ray.get_runtime_context().gcs_address, limit=10000)
    assert "RayTrainWorker" in {a.class_name for a in started}
    assert "PreemptionWatcher" not in {a.class_name for a in started}
    store = ResultStore(out)
    assert yaml.safe_load(open(os.path.join(out, "config.yaml"))) == yaml.safe_load(dump_config(cfg))
    metrics = store.read_table("metrics").to_pandas()
    assert list(metrics.columns) == ["selector", "seed", "stage", "eval_set", "eval_stage", "skill", "metric", "value"]
    assert set(metrics.stage) == {0, 1, 2} and set(metrics.selector) == {"random", "loss_high"}
    assert {"accuracy", "loss"} <= set(metrics.metric) and "all" in set(metrics.skill)
    assert set(metrics.eval_set) >= {"eval/stage1", "eval/stage2", "ood/stage1-length", "ood/stage2-format"}
    assert metrics[metrics.eval_set.str.startswith("ood/")].eval_stage.isna().all()
    assert not metrics.duplicated(["selector", "seed", "stage", "eval_set", "skill", "metric"]).any()
    curves = store.read_table("curves").to_pandas()
    assert list(curves.columns) == ["selector", "seed", "stage", "step", "split", "metric", "value"]
    assert {"train", "eval", "probe"} <= set(curves.split)
    assert set(curves[curves.split == "probe"].stage) == {1}  # no probe after the last stage
    timings = store.read_table("timings").to_pandas()
    assert {"ray_start", "worker_start", "scoring", "selection", "training", "evaluation", "probe"} <= set(
        timings.phase
    )
    for sel in ("random", "loss_high"):
        for t in (1, 2):
            picked = pq.read_table(os.path.join(out, f"selections/{sel}/s0/stage{t}.parquet"))
            assert picked.num_rows == 64 and picked.column("order").to_pylist() == list(range(64))
            assert os.path.exists(os.path.join(out, f"checkpoints/{sel}/s0/stage{t}/model.safetensors"))
    assert os.path.exists(os.path.join(out, "checkpoints/_base/s0/model.safetensors"))
    events = glob.glob(os.path.join(out, "tensorboard/random/0/events.out.tfevents.*curves-stage1"))
    assert len(events) == 1 and os.path.getsize(events[0]) > 0


def test_a_real_runs_selection_exports_as_the_pool_rows_it_picked(clean_run, tmp_path):
    """`lhas-ray export` on a protocol-written selection: the driver's own draw of the pool, in selection order."""
    import datasets

    from lhas_ray.export import ExportRequest, export_selection

    cfg, out = clean_run
    to = export_selection(ExportRequest(out, "loss_high", 0, 2, str(tmp_path / "ds")))
    ds = datasets.load_from_disk(to)
    picked = pq.read_table(os.path.join(out, "selections/loss_high/s0/stage2.parquet")).to_pandas()
    pool = build_suites(cfg)[0].stages[1].pool.to_pandas().set_index("example_id")
    assert ds["example_id"] == picked.sort_values("order").example_id.tolist()
    assert ds["prompt"] == pool.loc[ds["example_id"], "prompt"].tolist()


def test_loss_high_really_picks_the_highest_loss_examples(clean_run):
    _, out = clean_run
    feats = pq.read_table(os.path.join(out, "features/loss_high/s0/stage1.parquet")).to_pandas()
    picked = pq.read_table(os.path.join(out, "selections/loss_high/s0/stage1.parquet")).to_pandas()
    top = feats.nlargest(64, "loss").example_id
    assert set(picked.example_id) == set(top)


def test_a_stage_lowers_the_loss_and_its_checkpoint_loads_and_scores(clean_run):
    cfg, out = clean_run
    curves = ResultStore(out).read_table("curves").to_pandas()
    train = curves[(curves.selector == "random") & (curves.stage == 1) & (curves.split == "train")].sort_values("step")
    assert train.value.iloc[-5:].mean() < train.value.iloc[:5].mean()
    model, tok = load_pretrained(os.path.join(out, "checkpoints/random/s0/stage1"))
    suite = build_suite(cfg)
    got = per_example(model, tok, suite.stages[0].eval, cfg.model.max_length, 64)
    metrics = ResultStore(out).read_table("metrics").to_pandas()
    stored = metrics.query("selector == 'random' and stage == 1 and eval_set == 'eval/stage1' and skill == 'all'")
    assert got["correct"].mean() == pytest.approx(stored[stored.metric == "accuracy"].value.item())
    assert got["loss"].mean() == pytest.approx(stored[stored.metric == "loss"].value.item(), rel=1e-4)


def _run_cli(cfg_path: str, out: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "lhas_ray.cli", "run", cfg_path, "--output", out, "--no-report"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


NOISE = (
    "Reporting training result",
    "FutureWarning",
    "PreemptionWatcher",
    "execution finished",
    "Started a local Ray",
    "worker processes have been started",
)


def _assert_quiet_console(text: str, n_new: int, out: str) -> None:
    """A fixed header, one line per unit committed, then the closing line and table; none of the libraries' noise."""
    lines = text.splitlines()
    for noise in NOISE:
        assert noise.lower() not in text.lower(), f"{noise!r} reached the terminal:\n{text}"
    assert lines[0].startswith("lhas-ray run micro:") and f"logs in {os.path.join(out, 'logs')}" in lines[0], lines
    closing = next(i for i, line in enumerate(lines) if line.startswith("finished in"))
    units = [line for line in lines[1:closing] if line.strip()]
    assert len(units) == n_new and all(re.match(r"\d\d:\d\d:\d\d \[\d/6\] \S+ seed 0: ", u) for u in units), lines
    assert "random  (accuracy, mean of 1 seed)" in text
    logs = os.listdir(os.path.join(out, "logs"))
    assert "driver.log" in logs and {"micro-group0-rank0.log", "micro-group0-rank1.log"} <= set(logs), logs
    worker_log = open(os.path.join(out, "logs", "micro-group0-rank0.log")).read()
    assert "selector=" in worker_log  # the protocol's own phase lines, now in the worker's file


def test_killed_run_resumes_without_redoing_or_duplicating(clean_run, hf_model_dir, tmp_path):
    """Kill the CLI (and its Ray) once stage 1 is committed, rerun: same results as the clean run, no duplicates."""
    _, clean_out = clean_run
    cfg_path = tmp_path / "micro.yaml"
    cfg_path.write_text(yaml.safe_dump(micro_config(model_name=hf_model_dir)))
    out = str(tmp_path / "out")
    marker = os.path.join(out, "_committed", "random__s0__t1.json")
    proc = _run_cli(str(cfg_path), out)
    deadline = time.time() + 300
    while not os.path.exists(marker) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert os.path.exists(marker), "the run never committed stage 1"
    kill_tree(proc.pid)
    proc.wait()
    committed_before = {
        f: os.path.getmtime(os.path.join(out, "_committed", f)) for f in os.listdir(os.path.join(out, "_committed"))
    }
    assert {"random__s0__t2.json", "loss_high__s0__t2.json"}.isdisjoint(committed_before)

    # the rerun, as a user would start it, its output not a terminal (CI, `ray job submit` logs)
    cmd = [sys.executable, "-m", "lhas_ray.cli", "run", str(cfg_path), "--output", out, "--no-report"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_quiet_console(done.stdout + done.stderr, n_new=6 - len(committed_before), out=out)
    store = ResultStore(out)
    starts = store.read_table("timings").to_pandas().query("phase == 'worker_start'")
    assert len(starts) == 2  # the killed run's group, then the rerun's, once each
    for f, mtime in committed_before.items():  # nothing complete was redone
        assert os.path.getmtime(os.path.join(out, "_committed", f)) == mtime
    metrics = store.read_table("metrics").to_pandas()
    assert not metrics.duplicated(["selector", "seed", "stage", "eval_set", "skill", "metric"]).any()
    assert len(metrics) == len(ResultStore(clean_out).read_table("metrics"))
    # same config and seed, fresh folder: the same selections (and resuming did not change them)
    for sel in ("random", "loss_high"):
        for t in (1, 2):
            rel = f"selections/{sel}/s0/stage{t}.parquet"
            a = pq.read_table(os.path.join(clean_out, rel)).column("example_id").to_numpy()
            b = pq.read_table(os.path.join(out, rel)).column("example_id").to_numpy()
            np.testing.assert_array_equal(a, b, err_msg=rel)


def test_a_folder_holding_another_config_is_refused(clean_run):
    cfg, out = clean_run
    other = cfg.model_copy(update={"name": "other"})
    before = open(os.path.join(out, "config.yaml")).read()
    with pytest.raises(ValueError, match="different config"):
        run_experiment(other, out)
    assert open(os.path.join(out, "config.yaml")).read() == before


def _lm_eval_task(folder, words: tuple[str, ...]) -> str:
    """A multiple-choice lm-eval task (one doc per word, 3 choices) over a local jsonl, in its own include_path."""
    docs = [{"prompt": f"rv:{w}=", "choices": [w[::-1], w, "".join(sorted(w))], "label": 0} for w in words]
    return write_mc_task(folder, docs)


def _tiny_llama(folder: str) -> str:
    """A Llama-family causal LM with the built-in character tokenizer: the architecture of SmolLM2, tiny."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lhas_ray.model import char_tokenizer

    tok = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    return save_pretrained(LlamaForCausalLM(config), tok, folder)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_hf_dataset_stages_with_lora_and_token_accuracy(ray_session, tmp_path, zero_stage):
    """Stages read from jsonl files through `datasets`, a Llama-family model with LoRA adapters, next-token accuracy;
    under ZeRO-0 (real_text.yaml's layout: whole parameters on every rank, saved by the plain merge test_lora.py
    checks) and ZeRO-3 (cluster_llm.yaml), whose partitioned parameters must be gathered whole and the adapters
    merged on save. Every other protocol test trains the tiny GPT-2 under the default ZeRO-0."""
    import json

    rng = np.random.default_rng(0)
    words: list[str] = []  # distinct words, so no pool row repeats a held-out one (those would be removed)
    while len(words) < 280:
        word = "".join(rng.choice(list("abcdef"), size=rng.integers(2, 6)))
        if word not in words:
            words.append(word)
    for name, chunk in (("pool", words[:200]), ("heldout", words[200:260]), ("ood", words[260:])):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for word in chunk:
                f.write(json.dumps({"q": f"rv:{word}=", "a": word[::-1], "kind": "reverse"}) + "\n")
    spec = {"path": "json", "columns": {"prompt": "q", "answer": "a", "skill": "kind"}}
    raw = micro_config(model_name=_tiny_llama(str(tmp_path / "llama")), steps=20, zero_stage=zero_stage)
    raw["model"]["lora"] = {"r": 4, "alpha": 8}
    # lm-eval's requests (3 docs x 3 choices) dealt over the 2 ranks in batches of 2: 5 and 4 requests, 3 batches
    # each (one throwaway), so ZeRO-3's collective forwards stay in step
    include = _lm_eval_task(tmp_path / "tasks", ("ab", "bca", "dcb"))
    lm_eval = {"tasks": ["tiny_mc"], "include_path": include, "include_defaults": False, "batch_size": 2}
    raw["evaluation"] = {"accuracy": "token", "lm_eval": lm_eval}
    raw["training"]["warmup"] = {"steps": 0}
    raw["stages"] = [
        {
            "name": "hf",
            "source": "hf",
            "targets": ["reverse"],
            "budget": 64,
            "pool": {"size": 200},
            "eval_size": 30,
            "probe_size": 20,
            "ood_size": 10,
            "hf": {
                "pool": {**spec, "data_files": str(tmp_path / "pool.jsonl")},
                "eval": {**spec, "data_files": str(tmp_path / "heldout.jsonl")},
                "ood": {"other": {**spec, "data_files": str(tmp_path / "ood.jsonl")}},
            },
        }
    ]
    raw["selectors"] = [{"name": "less"}]
    out = str(tmp_path / "out")
    run_experiment(config_from_dict(raw), out)
    metrics = ResultStore(out).read_table("metrics").to_pandas()
    acc = metrics.query("eval_set == 'eval/stage1' and skill == 'all' and metric == 'accuracy'").set_index("stage")
    assert 0 < acc.value[1] <= 1 and acc.value[1] > acc.value[0]  # next-token accuracy rose over the base model
    lm = metrics.query("eval_set == 'lm_eval/tiny_mc' and metric == 'accuracy'")
    assert sorted(lm.stage) == [0, 1] and lm.value.isin([0, 1 / 3, 2 / 3, 1]).all()
    merged, _ = load_pretrained(os.path.join(out, "checkpoints/less/s0/stage1"))  # adapters merged: plain HF load
    base, _ = load_pretrained(os.path.join(out, "checkpoints/_base/s0"))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert all(p.numel() > 0 for p in merged.parameters())  # ZeRO-3: every partition gathered, none saved empty
    assert any(not torch.equal(a, b) for a, b in zip(merged.parameters(), base.parameters(), strict=True))
    feats = pq.read_table(os.path.join(out, "features/less/s0/stage1.parquet"))
    assert feats.num_rows == 200 and "grad" in feats.column_names


def test_per_seed_data_differs_across_seeds_and_is_shared_within_one(ray_session, hf_model_dir, tmp_path):
    """data.resample per_seed: each seed trains and is judged on its own draw, every selector of a seed on the same.

    Checked against the driver's own suites (build_suites): every selected example's skill and tags match the pool of
    its seed's draw, the two seeds' pools differ, and the general set covers every built-in skill after every stage.
    The run also has evaluation.lm_eval on (a custom lm-eval task on a local jsonl): its lm_eval/<task> rows are there
    for the base model and every stage of every trajectory, and give the lm_eval trajectory metrics.
    """
    raw = micro_config(
        model_name=hf_model_dir, steps=10, num_workers=1, warmup={"steps": 10, "size": 128, "lr": 3e-3}
    )  # one worker: this test is about data draws (clean_run covers two)
    raw["stages"] = raw["stages"][:1]
    raw["data"] = {**raw["data"], "resample": "per_seed"}
    raw["seeds"] = [0, 1]
    # less with Adam preconditioning: stage 1 scores its pool with the warm-up's optimizer state (saved with the base)
    raw["selectors"] = [{"name": "random"}, {"name": "less", "label": "less_adam", "params": {"precondition": "adam"}}]
    # general ability through lm-evaluation-harness: a custom task on a local jsonl, after the base and every stage
    include = _lm_eval_task(tmp_path / "tasks", ("ab", "bca", "dcb", "cab"))
    lm_eval = {"tasks": ["tiny_mc"], "include_path": include, "include_defaults": False}
    raw["evaluation"] = {**raw["evaluation"], "lm_eval": lm_eval}
    cfg = config_from_dict(raw)
    suites = build_suites(cfg)
    pools = {seed: suites[seed].stages[0].pool.to_pandas().set_index("example_id") for seed in cfg.seeds}
    assert not pools[0]["prompt"].equals(pools[1]["prompt"])
    out = str(tmp_path / "per_seed")
    run_experiment(cfg, out)
    for seed in cfg.seeds:
        for sel in ("random", "less_adam"):
            picked = pq.read_table(os.path.join(out, f"selections/{sel}/s{seed}/stage1.parquet")).to_pandas()
            expect = pools[seed].loc[picked.example_id]
            assert list(picked.skill) == list(expect.skill), (sel, seed)
            assert [list(t) for t in picked.tags] == [list(t) for t in expect.tags], (sel, seed)
    metrics = ResultStore(out).read_table("metrics").to_pandas()
    general = metrics[(metrics.eval_set == "general") & (metrics.metric == "accuracy") & (metrics.skill != "all")]
    from lhas_ray.tasks.builtin import SKILLS

    for (_, _, _), g in general.groupby(["selector", "seed", "stage"]):
        assert set(g.skill) == set(SKILLS)
    assert set(general.stage) == {0, 1}
    lm = metrics[(metrics.eval_set == "lm_eval/tiny_mc") & (metrics.metric == "accuracy")]
    units = {(sel, seed, t) for sel in ("random", "less_adam") for seed in cfg.seeds for t in (0, 1)}
    assert set(zip(lm.selector, lm.seed, lm.stage, strict=True)) == units and len(lm) == len(units)
    assert lm.value.isin([0, 0.25, 0.5, 0.75, 1]).all() and lm.eval_stage.isna().all()  # 4 docs
    traj = trajectory_metrics(metrics)
    assert len(traj[traj.metric == "lm_eval_delta"]) == 4 and len(traj[traj.metric == "lm_eval_acc"]) == 4
    from lhas_ray.training.moments import load_moments

    for seed in cfg.seeds:  # the warm-up's Adam state of the projected parameters, saved beside each seed's base
        moments = load_moments(ResultStore(out), f"checkpoints/_base/s{seed}")
        assert moments.exp_avg and all(v.abs().sum() > 0 for v in moments.exp_avg_sq.values())
    assert not os.path.exists(os.path.join(out, "checkpoints/less_adam/s0/stage1/adam_moments.safetensors"))  # last
    leaks = pq.read_table(os.path.join(out, "pool_leaks.parquet")).to_pandas()
    assert set(zip(leaks.seed, leaks.stage, strict=True)) == {(0, 1), (1, 1)} and (leaks.rows_removed == 0).all()
