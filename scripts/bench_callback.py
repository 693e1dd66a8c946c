"""Benchmark a whole training step of a user's LightningModule with vs without EntropyRegularizer.

The module is what a user writes (``loss = self.model(**batch).loss``, logged and returned; AdamW).
Variants, interleaved in one process (round 1: A B C D, round 2: A B C D, ...) so that a shared CPU's
load hits them alike:

  plain      no callback: the model's own cross-entropy
  one_pass   EntropyRegularizer (default): CE + regularizers in one pass over the logits, in out.loss
  hidden     EntropyRegularizer(hidden_path=True): from the final hidden states, chunked LM head
  additive   EntropyRegularizer(one_pass=False): the model's CE + a second pass for the regularizers

Regularizers: tail floor (top 5, floor 0.15) + anti-copy (unlikelihood, 16-token window) + entropy floor
(0.5 nats), as in recipes/smollm2-135m/combined.yaml. Data: the embedded SFT records tokenized by the
model's tokenizer, cut into rows of --seq tokens (the first 16 labels of a row are a masked "prompt").

Each round is a fresh ``Trainer.fit`` of --steps steps on the same module; the first step of every fit
is dropped (optimizer state allocation, warm-up). Time: median over steps of the wall time and of the
process CPU time from ``on_train_batch_start`` to ``on_train_batch_end`` (training_step, backward,
optimizer step). On a shared CPU the wall time follows the other jobs' load; with --threads 1 the CPU
time is the work the step did, and the ratios use it.
Peak memory: per step, the peak RSS above the RSS at the step's start (the kernel's high-water mark
reset through /proc/self/clear_refs), median over steps: what the step needs beyond weights and
optimizer state. The script re-executes itself with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 1 MiB,
so that every tensor of 1 MiB or more is its own mapping, returned to the system when freed: otherwise
malloc keeps freed activations in its heap and RSS stops following what the step really holds.

Usage: python scripts/bench_callback.py [--models tiny,smollm2] [--rounds 3] [--steps 3] [--batch 4] [--seq 128]
       [--threads N] [--variants plain,one_pass,hidden,additive] [--chunk-size ROWS]
The last line prints the ratios (callback / plain).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

VARIANTS = ["plain", "one_pass", "hidden", "additive"]
MODELS = {"tiny": "tiny", "smollm2": "embedded:smollm2-135m-instruct"}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)


def _batches(tokenizer, n: int, batch: int, seq: int):
    import torch

    from entropy_reg.data.pydoc_corpus import embedded_sft_records

    ids: list[int] = []
    for rec in embedded_sft_records():
        ids += tokenizer(rec["prompt"] + "\n" + rec["response"])["input_ids"]
        if len(ids) >= n * batch * seq:
            break
    rows = torch.tensor(ids[: n * batch * seq]).view(n, batch, seq)
    out = []
    for x in rows:
        labels = x.clone()
        labels[:, :16] = -100
        out.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels})
    return out


def _loss(chunk_size: int | None):
    from entropy_reg.losses import AntiCopyPenalty, EntropyFloor, EntropyRegularizedLoss, TailMassFloor

    return EntropyRegularizedLoss(
        [TailMassFloor(top_k=5, floor=0.15, weight=1.0), AntiCopyPenalty(weight=1.0), EntropyFloor(0.5, weight=0.1)],
        copy_window=16,
        chunk_size=chunk_size,
    )


def _callbacks(variant: str, chunk_size: int | None):
    from entropy_reg.callbacks import EntropyRegularizer

    if variant == "plain":
        return []
    kwargs = {"one_pass": {}, "hidden": {"hidden_path": True}, "additive": {"one_pass": False}}[variant]
    return [EntropyRegularizer(_loss(chunk_size), **kwargs)]


def bench_model(name: str, rounds: int, steps: int, batch: int, seq: int, chunk_size: int | None):
    import torch
    from lightning.pytorch import Callback, LightningModule, Trainer
    from torch.utils.data import DataLoader

    from entropy_reg.models import load_model_and_tokenizer

    class UserModule(LightningModule):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            loss = self.model(**batch).loss
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-5)

    class StepMeter(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu: list[float] = []
            self.peaks: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _reset_hwm()
            self._rss0 = _rss_mib()
            self._t0 = time.perf_counter()
            self._c0 = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self._t0)
            self.cpu.append(time.process_time() - self._c0)
            self.peaks.append(_hwm_mib() - self._rss0)

    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(MODELS[name])
    model.train()
    module = UserModule(model)
    data = _batches(tokenizer, steps, batch, seq)
    print(f"[{name}] loaded in {time.perf_counter() - t0:.1f} s; vocab {model.config.vocab_size}, "
          f"batch {batch}x{seq}, {rounds} rounds x {steps} steps per variant", flush=True)
    times = {v: [] for v in VARIANTS}
    cpu = {v: [] for v in VARIANTS}
    peaks = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for variant in VARIANTS:
            meter = StepMeter()
            trainer = Trainer(
                max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                callbacks=[meter, *_callbacks(variant, chunk_size)],
            )
            trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
            times[variant] += meter.times[1:]
            cpu[variant] += meter.cpu[1:]
            peaks[variant] += meter.peaks[1:]
            path = getattr(trainer.callbacks[-1], "path", "no callback")
            print(f"[{name}] round {r} {variant:9s} ({path}) wall s {[round(t, 2) for t in meter.times[1:]]} "
                  f"cpu s {[round(t, 2) for t in meter.cpu[1:]]} "
                  f"peak MiB {[round(p) for p in meter.peaks[1:]]}", flush=True)
    result = {}
    for v in VARIANTS:
        result[v] = {"wall": statistics.median(times[v]), "cpu": statistics.median(cpu[v]),
                     "peak": statistics.median(peaks[v])}
        print(f"[{name}] {v:9s} median step {result[v]['wall']:.3f} s wall, {result[v]['cpu']:.3f} s CPU, "
              f"peak above step start "
              f"{result[v]['peak']:.0f} MiB", flush=True)
    return result


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # read by glibc at process start only
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per fit (the first is dropped); tiny gets 5x")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="plain is always run")
    parser.add_argument("--chunk-size", type=int, default=None, help="loss chunk_size (default: the loss' own)")
    args = parser.parse_args()
    VARIANTS[:] = ["plain"] + [v for v in args.variants.split(",") if v != "plain"]
    import logging

    import lightning.pytorch  # noqa: F401  (sets its loggers up; quieten them after)
    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
          flush=True)
    summary = []
    for name in args.models.split(","):
        steps = args.steps * 5 if name == "tiny" else args.steps
        res = bench_model(name, args.rounds, steps, args.batch, args.seq, args.chunk_size)
        base = res["plain"]
        for v in VARIANTS[1:]:
            summary.append(
                f"{name} {v} CPU time {res[v]['cpu'] / base['cpu']:.3f}x (wall {res[v]['wall'] / base['wall']:.2f}x) "
                f"peak {res[v]['peak'] - base['peak']:+.0f} MiB"
            )
    print(f"load average after: {os.getloadavg()}", flush=True)
    print("ratios vs plain: " + "; ".join(summary))


if __name__ == "__main__":
    main()
