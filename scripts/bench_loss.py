"""Benchmark the one-pass loss against plain cross-entropy and a naive autograd implementation.

Shape defaults to SmolLM2-135M's: N = 4096 tokens (4 x 1024), V = 49152, H = 576, on CPU, float32.
Each case runs in its own process so that its peak memory (ru_maxrss above the inputs) is its own.
Cases, all forward + backward:
  plain_ce        F.cross_entropy on given logits (HF-style shift via padded labels)
  fast_logits     EntropyRegularizedLoss on the same logits (tail floor + anti-copy + entropy floor)
  matmul_ce       hidden @ W.T then plain cross-entropy
  fast_hidden     EntropyRegularizedLoss from hidden states (chunked LM-head matmul)
  naive_logits    CE + entropy + tail + copy + unlikelihood with plain autograd on full [N, V] tensors
  naive_hidden    the same after hidden @ W.T

Usage: python scripts/bench_loss.py [--tokens 4096] [--vocab 49152] [--hidden 576] [--repeats 3]
The last line prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = ["plain_ce", "fast_logits", "matmul_ce", "fast_hidden", "naive_logits", "naive_hidden"]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _regularized_loss():
    from entropy_reg.losses import AntiCopyPenalty, EntropyFloor, EntropyRegularizedLoss, TailMassFloor

    return EntropyRegularizedLoss(
        [TailMassFloor(top_k=5, floor=0.2, weight=1.0), AntiCopyPenalty(weight=0.5), EntropyFloor(1.0, weight=0.1)],
        stats_top_k=20,
        copy_window=256,
    )


def _naive(logits, labels, input_ids, window=256, top_k=5, k_stats=20, floor=0.2, min_h=1.0):
    """Textbook autograd version on full [N, V] tensors (what the fast path replaces)."""
    import torch
    import torch.nn.functional as F

    B, T, V = logits.shape
    z = logits[:, :-1].reshape(-1, V)
    y = labels[:, 1:].reshape(-1)
    logp = F.log_softmax(z.float(), dim=-1)
    p = logp.exp()
    ce = F.nll_loss(logp, y, reduction="none")
    ent = -(p * logp).sum(-1)
    tail = 1 - p.gather(1, z.detach().topk(top_k, dim=-1).indices).sum(-1)
    tail_stats = 1 - p.gather(1, z.detach().topk(k_stats, dim=-1).indices).sum(-1)
    # Dense copy mask, built per sequence.
    t = torch.arange(T - 1)
    s = torch.arange(T)
    ctx = (s[None, :] <= t[:, None]) & (s[None, :] > t[:, None] - window)
    mask = torch.zeros(B, T - 1, V)
    for b in range(B):
        mask[b].scatter_add_(1, input_ids[b].expand(T - 1, T), ctx.float())
    mask = (mask.view(-1, V) > 0)
    mask.scatter_(1, y[:, None], False)
    copy = (p * mask).sum(-1)
    ul = (-torch.log((1 - p).clamp_min(1e-6)) * mask).sum(-1)
    loss = (ce + torch.relu(floor - tail) + 0.5 * ul + 0.1 * torch.relu(min_h - ent)).mean()
    return loss, (ent.mean(), tail_stats.mean(), copy.mean())


def run_case(case: str, n: int, v: int, h: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    B = 4
    T = n // B
    input_ids = torch.randint(0, min(v, 4000), (B, T))
    labels = input_ids.clone()
    hidden_path = case in ("matmul_ce", "fast_hidden", "naive_hidden")
    if hidden_path:
        hidden = torch.randn(B, T, h) / h**0.5
        weight = torch.randn(v, h)
        hidden.requires_grad_()
        weight.requires_grad_()
    else:
        logits = torch.randn(B, T, v) * 3
        logits.requires_grad_()
    fast = _regularized_loss()

    def step():
        if case == "plain_ce":
            shift = F.pad(labels, (0, 1), value=-100)[:, 1:]
            loss = F.cross_entropy(logits.view(-1, v), shift.reshape(-1), ignore_index=-100)
            loss.backward()
        elif case == "fast_logits":
            fast(logits=logits, labels=labels, input_ids=input_ids).loss.backward()
        elif case == "matmul_ce":
            z = hidden @ weight.t()
            shift = F.pad(labels, (0, 1), value=-100)[:, 1:]
            F.cross_entropy(z.view(-1, v), shift.reshape(-1), ignore_index=-100).backward()
        elif case == "fast_hidden":
            fast(hidden=hidden, lm_head_weight=weight, labels=labels, input_ids=input_ids).loss.backward()
        elif case == "naive_logits":
            _naive(logits, labels, input_ids)[0].backward()
        elif case == "naive_hidden":
            _naive(hidden @ weight.t(), labels, input_ids)[0].backward()
        for t in (hidden, weight) if hidden_path else (logits,):
            t.grad = None

    base = _rss_mib()
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = peak - max(base, base_max) if peak > max(base, base_max) else 0.0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"case": case, "time_s": statistics.median(times), "extra_peak_mib": extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: one case per process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.tokens, args.vocab, args.hidden, args.repeats)))
        return
    results = {}
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case, "--tokens", str(args.tokens), "--vocab", str(args.vocab),
               "--hidden", str(args.hidden), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        results[case] = r
        print(f"{case:14s} time {r['time_s']:7.3f} s   extra peak memory {r['extra_peak_mib']:8.0f} MiB", flush=True)

    def ratio(a, b, key):
        return results[a][key] / max(results[b][key], 1e-9)

    chunk_mib = 2 * (64 * 2**20) / 2**20  # two [chunk, V] float32 buffers of the default 64 MiB chunk
    print(f"logits path extra peak vs plain CE: {results['fast_logits']['extra_peak_mib'] - results['plain_ce']['extra_peak_mib']:+.0f} MiB (budget: 2 chunks = {chunk_mib:.0f} MiB)")
    print(
        "ratios: "
        f"time fast_logits/plain_ce={ratio('fast_logits', 'plain_ce', 'time_s'):.2f}x  "
        f"time fast_hidden/matmul_ce={ratio('fast_hidden', 'matmul_ce', 'time_s'):.2f}x  "
        f"time naive_logits/plain_ce={ratio('naive_logits', 'plain_ce', 'time_s'):.2f}x  "
        f"mem fast_logits/plain_ce={ratio('fast_logits', 'plain_ce', 'extra_peak_mib'):.2f}x  "
        f"mem fast_hidden/matmul_ce={ratio('fast_hidden', 'matmul_ce', 'extra_peak_mib'):.2f}x  "
        f"mem naive_logits/plain_ce={ratio('naive_logits', 'plain_ce', 'extra_peak_mib'):.2f}x  "
        f"mem naive_hidden/fast_hidden={ratio('naive_hidden', 'fast_hidden', 'extra_peak_mib'):.1f}x"
    )


if __name__ == "__main__":
    main()
