"""Quick regularizer sweep on the tiny model: train, greedy-generate, score. For tuning, not for claims.

Same code path as the recipes (CausalLMModule + SFTDataModule + Lightning Trainer), without W&B,
validation or checkpoints, so that one configuration costs a couple of minutes on one CPU core.

    python scripts/tune_tiny.py --name ul1 --regs '[{"AntiCopyPenalty": {"weight": 1.0}}]' --steps 300

Prints one JSON line: greedy seq-rep-4 / rep-2 / entropy on the compare prompts, held-out perplexity.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import lightning as L
import torch

from entropy_reg import losses
from entropy_reg.data import SFTDataModule
from entropy_reg.generation import generate_with_entropy
from entropy_reg.metrics import entropy_summary, rep_n, seq_rep_n
from entropy_reg.module import CausalLMModule
from entropy_reg.report.prompts import DEFAULT_PROMPTS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--regs", default="[]", help='JSON list of {"ClassName": {init kwargs}}')
    ap.add_argument("--loss-kw", default="{}", help="JSON kwargs of EntropyRegularizedLoss")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    regs = [getattr(losses, name)(**kw) for item in json.loads(args.regs) for name, kw in item.items()]
    loss = losses.EntropyRegularizedLoss(regs, **json.loads(args.loss_kw))
    L.seed_everything(args.seed, verbose=False)
    model = CausalLMModule("tiny", loss=loss, learning_rate=args.lr, warmup_steps=30)
    data = SFTDataModule("tiny", max_length=args.max_length, batch_size=args.batch_size, seed=args.seed)
    t0 = time.perf_counter()
    trainer = L.Trainer(max_steps=args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", gradient_clip_val=1.0)
    trainer.fit(model, data)
    train_s = time.perf_counter() - t0
    from entropy_reg.data import format_prompt

    tok = model.tokenizer
    prompts = [format_prompt(tok, p) for p in DEFAULT_PROMPTS]
    res = generate_with_entropy(model.model, tok, prompts, "greedy", max_new_tokens=64, batch_size=12)
    # held-out perplexity with plain CE
    data.setup("validate")
    tot, n = 0.0, 0
    model.model.eval()
    with torch.no_grad():
        for i, batch in enumerate(data.val_dataloader()):
            if i >= 10:
                break
            out = losses.EntropyRegularizedLoss()(logits=model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                                  labels=batch["labels"])
            tot += float(out.sums["ce"])
            n += int(out.count)
    print(json.dumps({
        "name": args.name, "steps": args.steps, "lr": args.lr,
        "seq_rep_4": round(seq_rep_n(res.token_ids, 4), 4), "rep_2": round(rep_n(res.token_ids, 2), 2),
        "gen_entropy": round(entropy_summary([e for row in res.entropies for e in row])["mean"], 3),
        "ppl": round(math.exp(tot / n), 2), "train_s": round(train_s, 1)}), flush=True)


if __name__ == "__main__":
    main()
