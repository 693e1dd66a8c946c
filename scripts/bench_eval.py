"""Benchmark: generation with per-token raw-logit entropy capture vs plain ``model.generate``.

Both paths generate from the same prompts with the same left-padded batches and decoding; the capture
path is :func:`entropy_reg.generation.generate_with_entropy` (``output_logits=True`` + vectorised
entropy + cutting/decoding), the plain path is ``model.generate`` alone. Warm-up once, then the median of
``--repeats`` timings per path, run interleaved. Both wall-clock and process CPU time are measured; the
ratio uses CPU time by default (``--clock cpu``) because on a shared machine the wall clock mostly
measures the neighbours' load, while CPU time counts this process's own work (all its threads).
The last line printed is ``ratio capture/plain: X.XX`` (target <= 1.1).

    python scripts/bench_eval.py                      # tiny llama from a config (3x128, vocab 2048)
    python scripts/bench_eval.py --vocab-size 32000   # stress: LM head + entropy dominate the cost
    python scripts/bench_eval.py --smollm2 --max-new-tokens 32 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def char_tokenizer():
    """A char-level tokenizer built in code (no downloads) for the default tiny model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"()-\n":
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def tiny_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=256, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


PROMPTS = [
    "The history of the city begins",
    "Here is a short explanation of how a hash table works:",
    "Once upon a time, in a small village by the sea,",
    "To install the package, first",
    "The following list describes the main features:",
    "My favourite season of the year is",
    "Q: What does the len() function return? A:",
    "The most important thing to remember is",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm2", action="store_true", help="use the embedded SmolLM2-135M-Instruct (GGUF)")
    parser.add_argument("--vocab-size", type=int, default=2048,
                        help="vocab of the tiny model (2048 = the project's CI-scale tiny llama; 32000 is a "
                             "stress case where the LM head dominates a 3-layer, 128-wide body)")
    parser.add_argument("--decoding", default="greedy")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="clock used for the ratio")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, OpenMP threads spin-waiting for a "
                             "core inflate CPU time and make the comparison noise; 0 = leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from entropy_reg.generation.decode import _eos_ids, _left_pad, generate_with_entropy, parse_decoding

    if args.smollm2:
        try:
            from entropy_reg.models import load_model_and_tokenizer
        except ImportError as err:
            raise SystemExit(f"--smollm2 needs entropy_reg.models: {err}") from err
        model, tokenizer = load_model_and_tokenizer("embedded:smollm2-135m-instruct")
        model.eval()
    else:
        model, tokenizer = tiny_model(args.vocab_size), char_tokenizer()
    decoding = parse_decoding(args.decoding)
    prompts = (PROMPTS * (args.num_prompts // len(PROMPTS) + 1))[: args.num_prompts]

    # The plain path gets the exact batches the capture path builds (sorted by length, left padded).
    prompt_ids = [list(x) for x in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    eos = _eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    batches = [_left_pad([prompt_ids[i] for i in order[s : s + args.batch_size]], pad, torch.device("cpu"))
               for s in range(0, len(order), args.batch_size)]

    def plain() -> int:
        torch.manual_seed(0)
        n = 0
        with torch.no_grad():
            for ids, mask in batches:
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                     pad_token_id=pad, eos_token_id=eos or None, use_cache=True,
                                     **decoding.generate_kwargs())
                n += out[:, ids.shape[1] :].numel()
        return n

    def capture() -> int:
        res = generate_with_entropy(model, tokenizer, prompts, decoding, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size, seed=0)
        return sum(len(t) for t in res.token_ids)

    timings: dict[str, list[float]] = {"plain": [], "capture": []}
    cpu: dict[str, list[float]] = {"plain": [], "capture": []}
    for fn in (plain, capture):  # warm-up
        fn()
    paths = [("plain", plain), ("capture", capture)]
    for r in range(args.repeats):
        # Interleaved in ABBA order, so that a drift of the machine's load hits both paths alike.
        for name, fn in paths if r % 2 == 0 else paths[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            tokens = fn()
            timings[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"{name:8s} wall {timings[name][-1]:7.3f} s  cpu {cpu[name][-1]:7.3f} s  ({tokens} tokens)")
    wall = {k: statistics.median(v) for k, v in timings.items()}
    med = {k: statistics.median(v) for k, v in cpu.items()} if args.clock == "cpu" else wall
    print(f"model: {'smollm2-135m' if args.smollm2 else f'tiny llama (vocab {args.vocab_size})'}, "
          f"decoding {decoding.name}, {len(prompts)} prompts, max_new_tokens {args.max_new_tokens}, "
          f"threads {torch.get_num_threads()}")
    print(f"median wall: plain {wall['plain']:.3f} s, capture {wall['capture']:.3f} s "
          f"(ratio {wall['capture'] / wall['plain']:.2f})")
    best = {k: min(v) for k, v in (cpu if args.clock == "cpu" else timings).items()}
    print(f"min {args.clock}: plain {best['plain']:.3f} s, capture {best['capture']:.3f} s "
          f"(ratio {best['capture'] / best['plain']:.2f})")
    print(f"median {args.clock}: plain {med['plain']:.3f} s, capture {med['capture']:.3f} s")
    print(f"ratio capture/plain: {med['capture'] / med['plain']:.2f}")


if __name__ == "__main__":
    main()
