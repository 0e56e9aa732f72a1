"""Tokens/s of a training stage through Ray Train + DeepSpeed against a plain single-process torch loop, same script.

Both sides train the same model on the same real text (Python standard-library chunks, every row a full
``--seq-len`` tokens) with the same global batch, AdamW, schedule and gradient clipping. The baseline is one
process using every core the workers get (``workers x cpus-per-worker`` threads); the Ray side is ``--workers``
Train workers (gloo) running ``lhas_ray.training.stage.train_steps`` through ``make_engine`` (ZeRO ``--zero-stage``),
exactly as the protocol does. Only the ``--steps`` timed steps count (after ``--warmup-steps``); Train start-up
and model loading are printed separately. Memory of the 2-worker stage: the largest sum of the workers' RSS sampled
(psutil, every 0.2 s) while they run, and each worker's own high-water mark (``ru_maxrss``).

    .venv/bin/python benchmarks/bench_training.py [--lora 8]                    # SmolLM2-135M (issue 6 targets)
    .venv/bin/python benchmarks/bench_training.py --model tiny --steps 20       # quick check, tiny GPT-2

Targets (issue 6): ratio >= 0.7; peak memory of the 2-worker SmolLM2 stage < 8 GiB.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import threading
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

import lhas_ray  # noqa: E402, F401  (sets RAY_TRAIN_V2_ENABLED before ray.train is imported)
from lhas_ray.config import ModelConfig, TrainingConfig  # noqa: E402
from lhas_ray.local_ray import start_local_ray  # noqa: E402
from lhas_ray.model import build_model, encode, load_pretrained, save_pretrained, with_adapters  # noqa: E402
from lhas_ray.tasks.text import text_examples  # noqa: E402
from lhas_ray.training.engine import lr_lambda  # noqa: E402
from lhas_ray.training.stage import batch_indices  # noqa: E402

GIB = 2**30
LR = 1e-4
GRAD_CLIP = 1.0


def prepare_checkpoint(model: str, folder: str) -> str:
    """A local HF folder for the model: SmolLM2 from its converted cache, or the built-in tiny GPT-2 saved here."""
    if model == "tiny":
        m, tok = build_model(ModelConfig(max_length=512), seed=0)
        return save_pretrained(m, tok, os.path.join(folder, "tiny"))
    from lhas_ray.pretrained import resolve_model_name

    return resolve_model_name(model)


def full_length_examples(ckpt: str, n: int, seq_len: int, seed: int) -> pa.Table:
    """n stdlib-code chunks that each tokenise to at least seq_len tokens, so every row is exactly seq_len long."""
    _, tok = load_pretrained(ckpt)
    candidates = text_examples("code", min(4 * n + 64, 8000), seed=seed, split="pool", max_chars=max(8 * seq_len, 64))
    lengths = np.fromiter(map(len, tok(candidates.column("answer").to_pylist())["input_ids"]), dtype=np.int64)
    keep = np.flatnonzero(lengths >= seq_len)[:n]
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} chunks reach {seq_len} tokens; lower --seq-len or --batch-size x steps")
    return candidates.take(pa.array(keep))


def loss_text(losses: list[float]) -> str:
    """Per-step losses, short enough for one line (both sides see the same batches, so they should agree)."""
    shown = losses if len(losses) <= 8 else [*losses[:3], float("nan"), *losses[-3:]]
    return "loss per step " + " ".join("..." if np.isnan(v) else f"{v:.3f}" for v in shown)


def peak_rss_self() -> int:
    """This process's RSS high-water mark in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- baseline: one process, plain torch -------------------------------------------------------------------


def lora_config(rank: int) -> ModelConfig:
    """The model settings that decide adapters: LoRA of this rank (alpha 2 x rank, real_text.yaml's), or none."""
    return ModelConfig(lora={"r": rank, "alpha": 2 * rank} if rank else None)


def baseline(ckpt: str, examples: pa.Table, args: argparse.Namespace, threads: int, queue) -> None:
    """The plain loop (run in a fresh process so its memory and threads are its own); puts its figures on queue."""
    torch.set_num_threads(threads)
    model, tok = load_pretrained(ckpt)
    model = with_adapters(model, lora_config(args.lora))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    total = args.warmup_steps + args.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total))
    prompts = np.asarray(examples.column("prompt").to_numpy(zero_copy_only=False))
    answers = np.asarray(examples.column("answer").to_numpy(zero_copy_only=False))
    n, b = examples.num_rows, args.batch_size
    # the same batches as the Ray side, which calls train_steps once for the warm-up and once for the timed steps
    order = np.concatenate(
        [batch_indices(n, b, args.warmup_steps, args.seed), batch_indices(n, b, args.steps, args.seed)]
    )
    tokens, losses, start = 0, [], time.perf_counter()
    for step in range(total):
        if step == args.warmup_steps:
            tokens, losses, start = 0, [], time.perf_counter()
        batch = encode(tok, prompts[order[step]], answers[order[step]], args.seq_len)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        losses.append(loss.item())
    queue.put({"seconds": time.perf_counter() - start, "tokens": tokens, "peak_rss": peak_rss_self(), "loss": losses})


# --- Ray Train + DeepSpeed --------------------------------------------------------------------------------


def train_worker(config: dict) -> None:
    """What each Train worker runs: load, a DeepSpeed engine, warm-up steps, then the timed steps."""
    import ray.train

    from lhas_ray.training.dist import all_gather_objects, barrier, rank
    from lhas_ray.training.engine import deepspeed_config, disable_cpu_shm_op, make_engine
    from lhas_ray.training.stage import train_steps

    disable_cpu_shm_op()
    torch.set_num_threads(config["threads"])
    t0 = time.perf_counter()
    model, tok = load_pretrained(config["ckpt"])
    model = with_adapters(model, lora_config(config["lora"]))
    world = ray.train.get_context().get_world_size()
    train = TrainingConfig(
        batch_size=config["batch_size"], num_workers=world, zero_stage=config["zero_stage"], grad_clip=GRAD_CLIP
    )
    ds = deepspeed_config(train, ModelConfig(), world)
    if config["bucket_elements"]:
        zero = ds.setdefault("zero_optimization", {})
        zero["reduce_bucket_size"] = zero["allgather_bucket_size"] = config["bucket_elements"]
    engine = make_engine(model, ds, LR, 0.0, config["warmup_steps"] + config["steps"])
    load_s = time.perf_counter() - t0
    common = dict(micro_batch=train.micro_batch(world), max_length=config["seq_len"], seed=config["seed"])
    if config["warmup_steps"]:
        train_steps(engine, tok, config["examples"], steps=config["warmup_steps"], eval_every=10**9, **common)
    barrier()
    start = time.perf_counter()
    curve = train_steps(engine, tok, config["examples"], steps=config["steps"], eval_every=10**9, **common)
    barrier()
    seconds = time.perf_counter() - start
    mine = {"seconds": seconds, "load_s": load_s, "peak_rss": peak_rss_self(), "pid": os.getpid()}
    everyone = all_gather_objects(mine)
    loss = [r["value"] for r in curve if r["metric"] == "loss"]
    if rank() == 0:  # a file, not ray.train.report: Train V2 keeps metrics only alongside checkpoints
        with open(config["result_file"], "w") as f:
            json.dump({"workers": everyone, "loss": loss}, f)


class RssSampler(threading.Thread):
    """Samples the summed RSS and PSS of this run's Train workers every interval; keeps the largest sums seen.

    Only descendants of this process count (the local Ray instance it starts), so other Ray runs on a shared machine
    are not measured. RSS counts shared library pages once per worker (an upper bound); PSS splits them.
    """

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.rss_peak, self.pss_peak = interval, 0, 0
        self._halt = threading.Event()

    @staticmethod
    def _workers() -> list[psutil.Process]:
        out = []
        for p in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if cmd.startswith("ray::") and "TrainWorker" in cmd:
                out.append(p)
        return out

    def run(self) -> None:
        while not self._halt.is_set():
            rss = pss = 0
            for p in self._workers():
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
            self.rss_peak, self.pss_peak = max(self.rss_peak, rss), max(self.pss_peak, pss)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def ray_train(ckpt: str, examples: pa.Table, args: argparse.Namespace, storage: str) -> dict:
    """One TorchTrainer.fit() of the stage; returns the figures rank 0 reported plus sampled memory and wall time."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    start_local_ray(args.workers * args.cpus_per_worker, log_to_driver=args.verbose)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "ckpt": ckpt,
            "examples": examples,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "zero_stage": args.zero_stage,
            "seed": args.seed,
            "threads": args.cpus_per_worker,
            "result_file": os.path.join(storage, "result.json"),
            "bucket_elements": args.bucket_elements,
            "lora": args.lora,
        },
        scaling_config=ScalingConfig(
            num_workers=args.workers, use_gpu=False, resources_per_worker={"CPU": args.cpus_per_worker}
        ),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="bench-training", storage_path=storage),
    )
    os.makedirs(storage, exist_ok=True)
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    try:
        trainer.fit()
    finally:
        sampler.stop()
        wall = time.perf_counter() - start
        ray.shutdown()
    with open(os.path.join(storage, "result.json")) as f:
        out = json.load(f)
    out.update(wall=wall, rss_sum_peak=sampler.rss_peak, pss_sum_peak=sampler.pss_peak)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="'smollm2-135m' (default) or 'tiny' (built-in GPT-2)")
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps on each side")
    ap.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first (allocator, DeepSpeed buckets)")
    ap.add_argument("--batch-size", type=int, default=8, help="global batch (split over the workers)")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per row (every row is full length)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--zero-stage", type=int, default=0, help="DeepSpeed ZeRO stage (default: the product default, 0)")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (8: the stage make real runs); 0: all weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--bucket-elements",
        type=int,
        default=None,
        help="override ZeRO reduce/allgather bucket sizes (elements); default: the packaged zero{N}.json",
    )
    ap.add_argument("--skip-baseline", action="store_true", help="only the Ray side (for the memory check)")
    ap.add_argument("--verbose", action="store_true", help="show the Ray workers' logs")
    args = ap.parse_args()
    threads = args.workers * args.cpus_per_worker

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        t0 = time.perf_counter()
        ckpt = prepare_checkpoint(args.model, tmp)
        prep_s = time.perf_counter() - t0
        n_rows = args.batch_size * (args.steps + args.warmup_steps)
        examples = full_length_examples(ckpt, n_rows, args.seq_len, args.seed)
        n_params = sum(p.numel() for p in load_pretrained(ckpt)[0].parameters())
        print(f"model {args.model}: {n_params / 1e6:.1f}M parameters, checkpoint ready in {prep_s:.1f} s ({ckpt})")
        print(
            f"stage ({f'LoRA r={args.lora}' if args.lora else 'all weights'}): global batch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed steps after "
            f"{args.warmup_steps} warm-up; {threads} cores; {os.cpu_count()} on the machine, "
            f"load average {os.getloadavg()[0]:.1f} at the start"
        )

        base = None
        if not args.skip_baseline:
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=baseline, args=(ckpt, examples, args, threads, queue))
            proc.start()
            base = queue.get()
            proc.join()
            tps = base["tokens"] / base["seconds"]
            print(
                f"baseline  1 process x {threads} threads:  {tps:8.1f} tokens/s  "
                f"({base['seconds'] / args.steps:.2f} s/step, peak RSS {base['peak_rss'] / GIB:.2f} GiB, "
                f"{loss_text(base['loss'])})"
            )

        ray_out = ray_train(ckpt, examples, args, os.path.join(tmp, "ray"))
        workers = ray_out["workers"]
        seconds = max(w["seconds"] for w in workers)
        ray_tps = args.steps * args.batch_size * args.seq_len / seconds
        print(
            f"Ray Train + DeepSpeed ZeRO-{args.zero_stage}, {args.workers} workers x {args.cpus_per_worker} thread: "
            f"{ray_tps:8.1f} tokens/s  ({seconds / args.steps:.2f} s/step, {loss_text(ray_out['loss'])})"
        )
        print(
            f"  fit() wall {ray_out['wall']:.1f} s in all: worker load + engine {max(w['load_s'] for w in workers):.1f} s,"
            f" timed steps {seconds:.1f} s, the rest is Train start-up, warm-up steps and shutdown"
        )
        each = ", ".join(f"{w['peak_rss'] / GIB:.2f}" for w in workers)
        print(
            f"  memory of the {args.workers}-worker stage (sampled every 0.2 s): peak summed RSS "
            f"{ray_out['rss_sum_peak'] / GIB:.2f} GiB, PSS {ray_out['pss_sum_peak'] / GIB:.2f} GiB; per-worker "
            f"high-water marks {each} GiB (sum {sum(w['peak_rss'] for w in workers) / GIB:.2f} GiB)"
        )
        if base is not None:
            ratio = ray_tps / (base["tokens"] / base["seconds"])
            print(f"ratio Ray / baseline tokens/s: {ratio:.2f}  (target >= 0.7)")


if __name__ == "__main__":
    main()
