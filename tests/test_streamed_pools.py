"""Pools read from parquet files a batch at a time (``hf.pool.stream``) and scored by a Ray Data actor pool
(``scoring.mode: actor_pool``): the same rows, features and selections as an in-memory pool scored by the workers."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lhas_ray.config import config_from_dict
from lhas_ray.config.sources import HFSourceConfig
from lhas_ray.tasks import streamed
from lhas_ray.tasks.suite import build_suite
from tests.helpers import micro_config

# 3 files of 150, 157 and 164 rows; every 10th row has an empty answer (unusable); 2 pool rows repeat eval rows
FILE_ROWS = (150, 157, 164)


def _word(i: int) -> str:
    return "".join("abcdefgh"[int(c)] for c in np.base_repr(i + 8, 8))


def write_sources(folder) -> dict:
    """Parquet pool files and jsonl eval/OOD files; returns the hf stage block."""
    os.makedirs(folder, exist_ok=True)
    heldout = [{"q": f"rv:{_word(5000 + i)}=", "a": _word(5000 + i)[::-1], "kind": "reverse"} for i in range(60)]
    n = 0
    for f, rows in enumerate(FILE_ROWS):
        q = [f"rv:{_word(n + i)}=" for i in range(rows)]
        a = ["" if (n + i) % 10 == 3 else _word(n + i)[::-1] for i in range(rows)]
        kind = ["reverse" if (n + i) % 2 else "copy" for i in range(rows)]
        if f == 1:  # two pool rows that repeat held-out rows (up to case and spaces): dropped from the pool
            q[4], a[4] = heldout[0]["q"].upper(), heldout[0]["a"]
            q[9], a[9] = heldout[1]["q"] + "  ", heldout[1]["a"]
        pq.write_table(
            pa.table({"q": q, "a": a, "kind": kind}), os.path.join(folder, f"pool-{f}.parquet"), row_group_size=64
        )
        n += rows
    ood = [{"q": f"cp:{_word(9000 + i)}=", "a": _word(9000 + i), "kind": "copy"} for i in range(12)]
    for name, rows in (("heldout", heldout), ("ood", ood)):
        with open(os.path.join(folder, f"{name}.jsonl"), "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    spec = {"columns": {"prompt": "q", "answer": "a", "skill": "kind"}}
    return {
        "pool": {"path": "parquet", "data_files": os.path.join(folder, "pool-*.parquet"), **spec},
        "eval": {"path": "json", "data_files": os.path.join(folder, "heldout.jsonl"), **spec},
        "ood": {"other": {"path": "json", "data_files": os.path.join(folder, "ood.jsonl"), **spec}},
    }


USABLE = sum(FILE_ROWS) - sum(1 for i in range(sum(FILE_ROWS)) if i % 10 == 3)  # 471 - 47 = 424, by hand


def stage_config(model: str, folder, *, stream: bool, **scoring) -> dict:
    raw = micro_config(model_name=model, steps=4, num_workers=1, warmup={"steps": 0})
    hf = write_sources(folder)
    hf["pool"]["stream"] = stream
    stage = {"name": "hf", "source": "hf", "targets": ["reverse"], "budget": 32, "eval_size": 30, "probe_size": 20}
    stage.update({"ood_size": 10, "hf": hf, **({} if stream else {"pool": {"size": USABLE}})})
    raw["stages"] = [stage]
    raw["evaluation"] = {"general_size": 0}
    raw["scoring"] = {"batch_size": 50, "grad_dim": 8, **scoring}
    return raw


def test_a_streamed_pool_holds_the_rows_the_same_files_give_in_memory(ray_session, tmp_path):
    mem = build_suite(config_from_dict(stage_config("tiny-gpt2", tmp_path / "d", stream=False)))
    cfg = config_from_dict(stage_config("tiny-gpt2", tmp_path / "d", stream=True))
    suite = build_suite(cfg)
    stage = suite.stages[0]
    assert stage.pool.num_rows == 0 and stage.stream is not None  # nothing of the pool in the driver's suite
    assert stage.stream.first_ids[1] - stage.stream.first_ids[0] == 150 - 15  # file 0's usable rows, by hand
    assert stage.stream.rows == USABLE - 2 and stage.stream.removed == 2
    assert mem.stages[0].pool.num_rows == USABLE - 2 and mem.removed_from_pools == suite.removed_from_pools
    dataset = streamed.streamed_dataset(stage.stream)
    rows = pa.concat_tables(list(dataset.iter_batches(batch_format="pyarrow"))).sort_by("example_id")
    assert rows.equals(mem.stages[0].pool)  # same ids, text, skills, tags
    assert "RV:" not in "".join(rows.column("prompt").to_pylist())  # the upper-cased repeat of an eval row is gone
    assert suite.warmup.equals(mem.warmup) and suite.proxy.equals(mem.proxy)  # samples of the first pool agree
    ids = mem.stages[0].pool.column("example_id").to_numpy()[[0, 200, 417]]
    assert streamed.rows_with_ids(stage.stream, ids).column("prompt").to_pylist() == [
        mem.stages[0].pool.column("prompt")[i].as_py() for i in (0, 200, 417)
    ]


def test_a_streamed_file_is_read_in_blocks_of_at_most_pool_block_rows(tmp_path, monkeypatch):
    """Scoring actors receive whole blocks: one block per file would leave all but one actor idle on a one-file pool.
    A file of 250 usable rows read 160 at a time, in blocks of at most 100: 100 and 60, then 90; rows in file order."""
    folder = tmp_path / "one"
    folder.mkdir()
    words = [_word(i) for i in range(250)]
    pq.write_table(pa.table({"q": [f"rv:{w}=" for w in words], "a": [w[::-1] for w in words]}), folder / "p.parquet")
    spec = HFSourceConfig(path="parquet", data_files=str(folder / "p.parquet"), columns={"prompt": "q", "answer": "a"})
    pool = streamed.scan_pool(spec, stage=1, start_id=7, heldout=[])
    monkeypatch.setattr(streamed, "POOL_BLOCK_ROWS", 100)
    monkeypatch.setattr(streamed, "BATCH_ROWS", 160)  # a read batch ends inside the second block
    blocks = list(streamed._read_file(pa.table({"path": [pool.files[0]], "first_id": [7]}), pool))
    assert [b.num_rows for b in blocks] == [100, 60, 90]
    rows = pa.concat_tables(blocks)
    assert rows.column("example_id").to_pylist() == list(range(7, 257))
    assert rows.column("prompt").to_pylist() == [f"rv:{w}=" for w in words]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pool": {"path": "json"}}, "cannot stream"),
        ({"pool_size": 100}, "pool.size samples a pool in memory"),
        ({"eval": {"path": "parquet", "stream": True}}, "only a pool streams"),
        ({"pool": {"split": "train[:50]"}}, "drop split"),
    ],
)
def test_bad_stream_settings_are_refused_naming_the_setting(tmp_path, change, message):
    raw = stage_config("tiny-gpt2", tmp_path, stream=True)
    hf = raw["stages"][0]["hf"]
    for key in ("pool", "eval"):
        hf[key].update(change.get(key, {}))
    if "pool_size" in change:
        raw["stages"][0]["pool"] = {"size": change["pool_size"]}
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw)


def test_an_actor_pool_with_no_free_cpu_is_refused_before_ray_starts(tmp_path):
    from lhas_ray.launch import run_experiment

    raw = stage_config("tiny-gpt2", tmp_path, stream=True, mode="actor_pool")
    raw["ray"] = {"num_cpus": 2}
    raw["training"]["num_workers"] = 2
    with pytest.raises(ValueError, match="actor_pool needs 1 free CPU .* take 2 of this instance's 2"):
        run_experiment(config_from_dict(raw), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "config.yaml")  # refused before anything was written


@pytest.mark.slow
def test_actor_pool_on_a_streamed_pool_selects_what_workers_select_in_memory(ray_session, hf_model_dir, tmp_path):
    """The same stage run three ways: in memory, scored by 2 Train workers; streamed, scored by a Ray Data actor pool
    beside 1 Train worker; streamed, scored by 2 Train workers (lhas only). Stage 1 scores the base model in both, so features and selections must agree, for a gradient
    selector (less) and one that reads losses, embeddings, gradients and skills (lhas with skill clusters)."""
    from lhas_ray.launch import run_experiment

    selectors = [
        {"name": "less"},
        {"name": "lhas", "params": {"clusters": "skill", "l_a": 0.5, "knn": 8}},
    ]
    runs = {}
    plans = (
        ("mem", False, {}, 2, selectors),
        ("actors", True, {"mode": "actor_pool"}, 1, selectors),
        # the workers' streaming_split of the streamed pool, its reads beside 2 workers that hold both CPUs
        ("streamed_shards", True, {}, 2, selectors[1:]),
    )
    for name, stream, scoring, workers, chosen in plans:
        raw = stage_config(hf_model_dir, tmp_path / "d", stream=stream, **scoring)
        raw["training"]["num_workers"] = workers
        raw["selectors"] = chosen
        runs[name] = str(tmp_path / name)
        run_experiment(config_from_dict(raw), runs[name])
    pool = build_suite(config_from_dict(stage_config(hf_model_dir, tmp_path / "d", stream=False))).stages[0].pool
    pool = pool.to_pandas().set_index("example_id")
    for sel in ("less", "lhas"):
        got = {k: pq.read_table(f"{runs[k]}/selections/{sel}/s0/stage1.parquet").to_pandas() for k in ("mem", "actors")}
        assert list(got["actors"].example_id) == list(got["mem"].example_id), sel
        assert len(set(got["mem"].example_id)) == 32
        for run in ("mem", "actors"):  # the rows themselves: gathered from 2 ranks' shares, or read by id
            assert list(got[run].skill) == list(pool.loc[got[run].example_id].skill), (sel, run)
        feats = {k: pq.read_table(f"{runs[k]}/features/{sel}/s0/stage1.parquet") for k in ("mem", "actors")}
        assert feats["actors"].num_rows == USABLE - 2 and feats["actors"].column_names == feats["mem"].column_names
        for col in feats["mem"].column_names:
            a, b = (np.asarray(feats[k].column(col).to_pylist()) for k in ("mem", "actors"))
            if a.dtype.kind in "fi":
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=f"{sel} {col}")
            else:
                assert list(a) == list(b), (sel, col)
    rel = "selections/lhas/s0/stage1.parquet"
    shards = pq.read_table(f"{runs['streamed_shards']}/{rel}").to_pandas()
    assert list(shards.example_id) == list(pq.read_table(f"{runs['mem']}/{rel}").column("example_id").to_pylist())
    assert list(shards.skill) == list(pool.loc[shards.example_id].skill)
    from lhas_ray.export import ExportRequest, export_selection

    folder = export_selection(ExportRequest(runs["actors"], "lhas", 0, 1, str(tmp_path / "x"), "parquet"))
    exported = pq.read_table(os.path.join(folder, "data.parquet"))
    picked = pq.read_table(f"{runs['actors']}/selections/lhas/s0/stage1.parquet").sort_by("order")
    assert exported.column("example_id").equals(picked.column("example_id"))
    assert exported.column("prompt").to_pylist() == list(pool.loc[picked.column("example_id").to_pylist()].prompt)
    from ray.util.state import list_actors

    started = {a.class_name for a in list_actors(address=ray_session.get_runtime_context().gcs_address, limit=10000)}
    assert any("PoolScorer" in name for name in started)  # the streamed run was scored by Ray Data actors
    timings = pq.read_table(f"{runs['actors']}/timings.parquet").to_pandas()
    assert (timings[timings.phase == "scoring"].seconds > 0).all()
