"""Helpers shared by test modules (which never import each other): small configs, stand-in protocols, and a
plain-Python reference of the built-in skills."""

from __future__ import annotations

import signal
import sys

import psutil
import pyarrow as pa
import ray.cloudpickle

from lhas_ray.store import ResultStore, Unit

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stand-in protocols run inside Tune trials


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything under it (its Ray's raylet and workers), all frozen first.

    Killing the group alone leaves Ray's workers, each in a process group of its own, alive for a moment: one of them
    could commit a unit after the test has listed what the killed run committed. Frozen with SIGSTOP, none can write
    or fork."""
    frozen: dict[int, psutil.Process] = {}
    while True:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        fresh = [p for p in tree if p.pid not in frozen]
        if not fresh:
            break
        for p in fresh:
            try:
                p.send_signal(signal.SIGSTOP)
                frozen[p.pid] = p
            except psutil.NoSuchProcess:
                pass
    for p in frozen.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(frozen.values()), timeout=30)


def tiny_llama(seed: int = 0, vocab_size: int = 40):
    """SmolLM2's architecture (Llama: nn.Linear projections, RMSNorm, a tied embedding; pad id 0) at test size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def write_mc_task(folder, docs: list[dict], name: str = "tiny_mc") -> str:
    """A multiple-choice lm-eval task over a local jsonl (prompt, choices, label), as a user writes one, in its own
    include_path folder (returned)."""
    import json

    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task))
    return str(folder)


def reverse_pool_spec(pool_size: int, stage: int = 1, eval_size: int = 1, probe_size: int = 1):
    """The built-in suite's spec of one 'reverse' stage with the usual shares (40% target, 30% related, 10% noise, 5%
    duplicates) and no OOD sets: the pool the scoring tests and benchmarks draw."""
    from lhas_ray.tasks import builtin

    return builtin.SuiteSpec(
        stage=stage,
        targets=("reverse",),
        pool_size=pool_size,
        target_share=0.4,
        related_share=0.3,
        noise=0.1,
        duplicates=0.05,
        eval_size=eval_size,
        ood=(),
        ood_size=1,
        probe_size=probe_size,
    )


def micro_config(model_name: str = "tiny-gpt2", **training) -> dict:
    """2 stages, 2 selectors, 1 seed, a few dozen steps: the whole protocol in well under a minute."""
    stage = {"budget": 64, "pool": {"size": 256}, "eval_size": 32, "ood_size": 8, "probe_size": 32}
    return {
        "name": "micro",
        "model": {"name": model_name, "n_layer": 1, "n_embd": 32, "n_head": 2, "max_length": 24},
        "data": {"seed": 0, "min_len": 2, "max_len": 4},
        "stages": [{"name": "rev", "targets": ["reverse"], **stage}, {"name": "srt", "targets": ["sort"], **stage}],
        "selectors": [{"name": "random"}, {"name": "loss_high"}],
        "seeds": [0],
        "training": {
            "steps": 30,
            "lr": 3e-3,
            "batch_size": 16,
            "num_workers": 2,
            "eval_every": 10,
            "warmup": {"steps": 30, "size": 256, "lr": 3e-3},
            **training,
        },
        "probe": {"steps": 6, "eval_every": 3},
        "scoring": {"batch_size": 64},
        "evaluation": {"general_size": 8},  # 8 of each of the 8 skills: every capability measured, kept cheap
    }


def sweep_config(**tune) -> dict:
    """The micro protocol with one Train worker, an lhas selector with a non-default param, and a small sweep."""
    raw = micro_config(num_workers=1, steps=20, warmup={"steps": 20, "size": 256, "lr": 3e-3})
    raw["selectors"] = [{"name": "random"}, {"name": "lhas", "params": {"knn": 16, "l_c": 0.5}}]
    raw["tune"] = {"trials": 2, "max_concurrent": 1, "scheduler": "fifo", "seed": 0, **tune}
    raw["tune"] = {"heldout_seeds": [9], "confirm_baselines": ["random"], **raw["tune"]}
    return raw


def fake_protocol(cfg, out, data, group, fixed, name, callbacks, verbose=False):
    """Commit every unit with accuracy 0.5 if l_u >= 1 else 0 (so 'acc / acc' is 1 or NaN), as the protocol would."""
    store = ResultStore(out)
    acc = 0.5 if cfg.selectors[0].params["l_u"] >= 1 else 0.0
    n = len(cfg.stages)
    for selector, seed in group:
        for t in range(n + 1):
            rows = [(selector, seed, t, f"eval/stage{j}", j, "all", "accuracy", acc) for j in range(1, n + 1)]
            cols = ["selector", "seed", "stage", "eval_set", "eval_stage", "skill", "metric", "value"]
            table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})
            store.write_part("metrics", Unit(selector, seed, t), table)
            store.commit(Unit(selector, seed, t))


def reference_answer(skill: str, x: str) -> str:
    """A plain-Python reference implementation of each skill."""
    if skill == "copy":
        return x
    if skill == "reverse":
        return x[::-1]
    if skill == "sort":
        return "".join(sorted(x))
    if skill == "sort_reverse":
        return "".join(sorted(x))[::-1]
    if skill == "add":
        a, c = x.split("+")
        return str(int(a) + int(c))
    if skill == "reverse_add":
        a, c = x.split("+")
        return str(int(a[::-1]) + int(c[::-1]))
    if skill == "count":
        s, q = x.split("/")
        return str(s.count(q))
    if skill == "lookup":
        pairs, q = x.split("/")
        return dict(zip(pairs[::2], pairs[1::2], strict=True))[q]
    raise AssertionError(skill)
