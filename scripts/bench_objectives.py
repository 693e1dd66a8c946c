"""Step time of the sequence-level objectives against a plain training step, side by side in one process.

A "step" is what CausalLMModule does per optimizer step: the hidden-state CE loss, the objectives that
run at this step, one backward, one AdamW update. Three variants share one model and one batch and are
timed interleaved (round-robin, order rotated every round, after one untimed plain warm-up step):

  plain    CE only
  ditto    CE + RepetitionConsistency on this step (one extra forward+backward of the batch's size)
  seq_ul   CE + SequenceUnlikelihood on this step (greedy generation of 64 tokens with the KV cache,
           then one forward+backward of prefix + continuation)
  ct       CE + ContrastiveToken(window 16) in the same one-pass loss (no extra forward)
  anchor   CE + ReferenceAnchor on this step (greedy generation of 48 tokens, a no-grad forward of the
           frozen reference copy, one forward+backward of prefix + continuation)
  anchor_r2  the same with reuse_steps=2 (one generation per two runs; the average of two runs is timed)
  floor    CE + LoopEntropyFloor on this step (one forward+backward of the pseudo-repetitive batch)

Each objective is timed on steps where it runs (rate 1); at ``rate=0.5`` half of the steps pay it, so
the expected step-time ratio is ``(1 + ratio_when_running) / 2`` (printed as ``@rate0.5``). Medians of
wall time and of this process's CPU time (with ``--threads 1`` the CPU time is the work done, unaffected
by other jobs sharing the machine; wall time is what a dedicated machine would see).

Shapes: ``tiny`` (the tiny recipe: in-code 3-layer Llama, 16 x 128 tokens) and ``smollm2`` (the
embedded SmolLM2-135M-Instruct, 4 x 128 tokens; ~4 s per plain step on 2 CPU cores, so keep its rounds few).

Usage: python scripts/bench_objectives.py [--shapes tiny smollm2] [--rounds 5] [--smollm2-rounds 2] [--threads 1]
The last lines print the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {
    "tiny": {"model": "tiny", "batch_size": 16, "max_length": 128},
    "smollm2": {"model": "embedded:smollm2-135m-instruct", "batch_size": 4, "max_length": 128},
}


def build(shape: str):
    from entropy_reg.data import SFTDataModule
    from entropy_reg.losses import ContrastiveToken, EntropyRegularizedLoss
    from entropy_reg.module import CausalLMModule
    from entropy_reg.objectives import (
        LoopEntropyFloor,
        ObjectiveRunner,
        ReferenceAnchor,
        RepetitionConsistency,
        SequenceUnlikelihood,
    )

    spec = SHAPES[shape]
    torch.manual_seed(0)
    module = CausalLMModule(model_name_or_path=spec["model"])
    dm = SFTDataModule(tokenizer=module.tokenizer, batch_size=spec["batch_size"], max_length=spec["max_length"],
                       max_records=8 * spec["batch_size"], seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    runners = {
        "plain": ObjectiveRunner([], "bench"),
        "ditto": ObjectiveRunner([RepetitionConsistency(rate=1.0)], "bench"),
        "seq_ul": ObjectiveRunner([SequenceUnlikelihood(rate=1.0, continuation_length=64)], "bench"),
        "ct": ObjectiveRunner([], "bench"),
        "anchor": ObjectiveRunner([ReferenceAnchor(rate=1.0)], "bench"),
        "anchor_r2": ObjectiveRunner([ReferenceAnchor(rate=1.0, reuse_steps=2)], "bench"),
        "floor": ObjectiveRunner([LoopEntropyFloor(rate=1.0)], "bench"),
    }
    for runner in runners.values():
        runner.setup(module.tokenizer)
        for objective in runner.objectives:
            objective.observe(module.model, 0)  # the anchor's frozen copy: the model before any step
    losses = {"ct": EntropyRegularizedLoss([ContrastiveToken(window=16)])}
    return module, batch, runners, losses


def timed_step(module, batch, runner, optimizer, step: int, loss_fn=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one training step (``loss_fn``: the module's loss
    swapped for this step)."""
    start, cpu = time.perf_counter(), time.process_time()
    saved = module.loss_fn
    if loss_fn is not None:
        module.loss_fn = loss_fn
    try:
        loss = module._loss(batch).loss
    finally:
        module.loss_fn = saved
    extra = runner(module.model, batch, step=step)
    if extra is not None:
        loss = loss + extra
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, time.process_time() - cpu


def bench(shape: str, rounds: int) -> dict[str, dict[str, float]]:
    module, batch, runners, losses = build(shape)
    module.model.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)  # tiny LR: the model stays what it was
    names = list(runners)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    timed_step(module, batch, runners["plain"], optimizer, step=0)  # warm-up: allocators, caches
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(timed_step(module, batch, runners[name], optimizer, step=r, loss_fn=losses.get(name)))
            wall, cpu = times[name][-1]
            print(f"[{shape}]   round {r} {name}: {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)
    stats = {k: v for runner in runners.values() for k, v in runner.stats.reduce().items()}
    # anchor_r2 alternates generating and reusing runs: its mean is the cost per run, not its median.
    centre = {n: statistics.fmean if n == "anchor_r2" else statistics.median for n in names}
    med = {kind: {n: centre[n](t[i] for t in v) for n, v in times.items()} for i, kind in enumerate(("wall", "cpu"))}
    tokens = int(batch["input_ids"].numel())
    print(f"[{shape}] batch {tuple(batch['input_ids'].shape)} ({tokens} tokens), {rounds} timed rounds")
    for n in names:
        print(f"[{shape}]   {n:7s} median {med['wall'][n]:.3f} s wall, {med['cpu'][n]:.3f} s CPU")
    print(f"[{shape}]   seq_ul marked share {float(stats.get('train/seq_ul/marked_share', float('nan'))):.3f}, "
          f"ditto skipped share {float(stats.get('train/ditto/skipped_share', float('nan'))):.3f}")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "smollm2"], choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds for tiny")
    parser.add_argument("--smollm2-rounds", type=int, default=2, help="timed rounds for smollm2 (~20 s each)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: ratios stay stable when other jobs share the CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {s: bench(s, args.smollm2_rounds if s == "smollm2" else args.rounds) for s in args.shapes}
    for shape, med in results.items():
        for name in [n for n in med["wall"] if n != "plain"]:
            for kind in ("wall", "cpu"):
                running = med[kind][name] / med[kind]["plain"]
                if name == "ct":  # a regularizer: every step pays it, there is no rate
                    print(f"RATIO [{shape}] ct/plain ({kind} time): {running:.2f}x on every step (target <= 1.5x)")
                    continue
                print(f"RATIO [{shape}] {name}/plain ({kind} time): {running:.2f}x on a step that runs it, "
                      f"{(1 + running) / 2:.2f}x @rate0.5 (target <= 1.5x at the rate used)")


if __name__ == "__main__":
    main()
