"""Validation perplexity of a language model: one stream at batch 1 (as train_lm did until issue 14) vs
primer's batched pass (parallel stretches of the text with a warm-up each), on the held-out tail of
The Time Machine (the stage's 10%).

Each model (LSTM and GRU, scratch and fused, hidden 256) first trains for --train-batches random
batches of 32x35 so that its perplexity depends on context; then both evaluations run --repeats
times. The table gives seconds per evaluation (median) and both perplexities.

    python benchmarks/lm_validation.py [--corpus ../shared/datasets/d2l/timemachine.txt] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from primer.models.rnn import RNNLM, perplexity
from primer.text.corpus import Vocab, load_corpus, seq_data_iter_random, seq_data_iter_sequential, split_tail
from primer.training.loop import make_optimizer

from bench_device import add_device_args, choose_device, clock, describe

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "d2l" / "timemachine.txt"


@torch.no_grad()
def per_window(model: RNNLM, ids: torch.Tensor, num_steps: int, device) -> float:
    """The old evaluation, restated: batch 1, windows of 8 * num_steps in order, state carried, a
    read-back per window."""
    model.reset_state()
    model.carry_state = True
    total, count = 0.0, 0
    w = max(1, min(num_steps * 8, (len(ids) - 1) // 2))
    for x, y in seq_data_iter_sequential(ids, 1, w, torch.Generator().manual_seed(0)):
        _, loss = model(x.to(device), y.to(device))
        total, count = total + loss.item() * y.numel(), count + y.numel()
    model.reset_state()
    model.carry_state = False
    return math.exp(total / count)


def timed(fn, device, repeats: int) -> tuple[float, float]:
    seconds, value = [], 0.0
    for _ in range(repeats):
        start = clock(device)
        value = fn()
        seconds.append(clock(device) - start)
    return statistics.median(seconds), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--train-batches", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    add_device_args(parser)
    args = parser.parse_args()
    device = choose_device(args.device)
    text = load_corpus(args.corpus)
    vocab = Vocab(text)
    train, val = split_tail(torch.tensor(vocab.encode(text)), 0.1)
    batches = list(seq_data_iter_random(train, 32, 35, torch.Generator().manual_seed(0)))[: args.train_batches]
    print(f"\nheld-out tail: {len(val):,} characters; {describe(device)}; median of {args.repeats}\n")
    print("| model | one stream, batch 1: s | ppl | batched: s | ppl | relative difference | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for cell, impl in (("lstm", "scratch"), ("lstm", "fused"), ("gru", "scratch"), ("gru", "fused")):
        torch.manual_seed(0)
        model = RNNLM(len(vocab), cell, 256, 1, impl).to(device)
        optimizer = make_optimizer(model, "sgd", 1.0)
        for x, y in batches:
            _, loss = model(x.to(device), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        old_s, old = timed(lambda: per_window(model, val, 35, device), device, args.repeats)
        new_s, new = timed(lambda: perplexity(model, val, 35, device), device, args.repeats)
        print(f"| {cell} {impl} | {old_s:.3f} | {old:.4f} | {new_s:.3f} | {new:.4f} | {abs(new - old) / old:.1e} "
              f"| {old_s / new_s:.1f}x |")


if __name__ == "__main__":
    main()
