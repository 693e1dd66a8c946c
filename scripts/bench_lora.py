"""LoRA vs full fine-tuning on SmolLM2-135M-Instruct (the embedded model): step time and peak memory on CPU.

One training step = CausalLMModule's hidden-state loss (plain CE) on a 4 x 128 batch, backward, AdamW
step over the trainable parameters. The GGUF model is dequantised once and written as a plain HF
directory (entropy_reg.models.export.serializable), so that the measuring processes load it in a second and
the GGUF dequantisation peak does not mask the training peak.

Each measurement runs in its own process (peak memory = the process' ru_maxrss, and "above the loaded
model" = that minus the RSS right after loading), and the processes alternate LoRA, full, LoRA, full,
... so that load on a shared machine hits both alike. Step time = median over the steps after the first
(the first allocates gradients and optimizer state) of all rounds, as CPU time of the process (with
one thread it is the wall time of an idle machine, and it does not count time the CPU spent on other
jobs, which on a shared box swings wall times 2-3x) and as wall time.

Usage: python scripts/bench_lora.py [--rounds 2] [--steps 4] [--r 8] [--threads 1] [--model-dir DIR]
(one thread: on a small shared CPU box, spinning intra-op threads make steps several times slower;
``--model-dir``: an already dequantised HF directory of the model, e.g. from ``entropy-reg export``)
The last line prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BATCH, SEQ = 4, 128


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(mode: str, model_dir: str, steps: int, r: int, threads: int) -> dict:
    import torch

    from entropy_reg.module import CausalLMModule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lora = {"r": r, "alpha": 2 * r, "dropout": 0.05, "target_modules": "all-linear"} if mode == "lora" else None
    module = CausalLMModule(model_name_or_path=model_dir, lora=lora)
    module.train()
    with torch.no_grad():  # safetensors maps the weights lazily: make them resident before "loaded"
        sum(float(p.sum()) for p in module.parameters())
    loaded = _rss_mib()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    vocab = module.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    times, cpu_times = [], []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        t0, c0 = time.perf_counter(), time.process_time()
        out = module._loss(batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        assert torch.isfinite(out.loss).item()
    assert module._hidden_path_blocker() is None
    return {
        "mode": mode,
        "times": times,
        "cpu_times": cpu_times,
        "loaded_mib": loaded,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in module.parameters()),
    }


def write_plain_model(out: str) -> None:
    from transformers.utils import logging as hf_logging

    from entropy_reg.models.export import serializable

    hf_logging.disable_progress_bar()
    from entropy_reg.models import SMOLLM2_NAME, load_causal_lm

    serializable(load_causal_lm(SMOLLM2_NAME)).save_pretrained(out)
    from entropy_reg.models import load_tokenizer

    load_tokenizer(SMOLLM2_NAME).save_pretrained(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model-dir", help="a plain HF directory of SmolLM2 (default: dequantise the embedded GGUF)")
    p.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.steps, args.r, args.threads)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TRANSFORMERS_VERBOSITY="error")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.model_dir or scratch
        if not args.model_dir:
            t0 = time.perf_counter()
            write_plain_model(tmp)
            print(f"SmolLM2-135M dequantised to {tmp} in {time.perf_counter() - t0:.0f} s", flush=True)
        results: dict[str, list[dict]] = {"lora": [], "full": []}
        for rnd in range(args.rounds):
            for mode in ("lora", "full"):
                cmd = [sys.executable, __file__, "--child", mode, "--model-dir", tmp, "--steps", str(args.steps),
                       "--r", str(args.r), "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if res.returncode != 0:
                    sys.exit(f"{mode} run failed:\n{res.stderr[-3000:]}")
                out = json.loads(res.stdout.strip().splitlines()[-1])
                results[mode].append(out)
                print(f"round {rnd + 1} {mode}: steps {', '.join(f'{t:.2f}' for t in out['cpu_times'])} s CPU "
                      f"({', '.join(f'{t:.2f}' for t in out['times'])} s wall); "
                      f"peak RSS {out['peak_mib']:.0f} MiB (loaded {out['loaded_mib']:.0f} MiB)", flush=True)
    summary = {}
    for mode, runs in results.items():
        summary[mode] = {
            "step_s": statistics.median(t for run in runs for t in run["cpu_times"][1:]),
            "wall_s": statistics.median(t for run in runs for t in run["times"][1:]),
            "peak_mib": max(run["peak_mib"] for run in runs),
            "extra_mib": max(run["peak_mib"] - run["loaded_mib"] for run in runs),
            "trainable": runs[0]["trainable"],
            "total": runs[0]["total"],
        }
    print(f"\nSmolLM2-135M-Instruct, float32, batch {BATCH} x {SEQ}, {args.threads} threads, AdamW, "
          f"{args.rounds} rounds x {args.steps} steps (first step of each run excluded)")
    print("| mode | trainable params | step CPU time (median) | step wall time (median) | peak RSS | "
          "above the loaded model |")
    print("|---|---|---|---|---|---|")
    for mode, s in summary.items():
        label = f"LoRA r={args.r} (all linear layers)" if mode == "lora" else "full fine-tuning"
        print(f"| {label} | {s['trainable'] / 1e6:.2f} M of {s['total'] / 1e6:.1f} M | {s['step_s']:.2f} s | "
              f"{s['wall_s']:.2f} s | {s['peak_mib']:.0f} MiB | {s['extra_mib']:.0f} MiB |")
    lo, fu = summary["lora"], summary["full"]
    print(f"ratios LoRA/full: step CPU time {lo['step_s'] / fu['step_s']:.2f}x (wall {lo['wall_s'] / fu['wall_s']:.2f}x), "
          f"peak RSS {lo['peak_mib'] / fu['peak_mib']:.2f}x, memory above the loaded model "
          f"{lo['extra_mib'] / fu['extra_mib']:.2f}x")


if __name__ == "__main__":
    main()
