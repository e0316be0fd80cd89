"""Language-model training throughput: the primer's per-gate RNNs in d2l's loop vs ours, scratch and fused.

For LSTM, GRU and RNN (--cells) at hidden 256, batch 32, 35 steps, one process, on the same minibatches of
the real Time Machine, already on --device, training tokens/s (after --warmup untimed steps) of:
  (a) the primer's way: its per-gate equations restated here (one-hot inputs, a separate matmul per
      gate and time step, a Python loop), driven by d2l 0.17.6's RNNModelScratch and train_epoch_ch8
      (SGD lr 1, clipping 1) — d2l installed with --no-deps, see benchmarks/requirements.txt;
  (b) our scratch implementation (primer.models.rnn, impl=scratch) through primer.training.loop.fit;
  (c) our fused implementation (nn.LSTM/GRU/RNN) through primer.training.loop.fit.
--compile applies torch.compile to (b) and (c) only. Median of --repeats interleaved rounds; also the
host syncs of one step of (b) and (c) (forward, backward, clip, SGD step; counted outside the timed
region). Last line: `ratio=X.XX` for the first cell's (b)/(a).

    python benchmarks/lm_throughput.py [--corpus ../shared/datasets/d2l/timemachine.txt] [--batches 40]
        [--cells lstm,gru,rnn] [--device auto|cpu|cuda] [--compile off|default|reduce-overhead]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from d2l import torch as d2l

from primer.models.rnn import RNNLM
from primer.text.corpus import Vocab, load_corpus, seq_data_iter_random
from primer.training.loop import FitConfig, compile_model, fit, make_optimizer

from bench_device import add_device_args, choose_device, describe, syncs_per_step, timed_batches, untimed_steps

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "d2l" / "timemachine.txt"
B, T, H = 32, 35, 256


def _normal(*shape, device):
    return torch.randn(shape, device=device) * 0.01


def _gate(v: int, device):
    return _normal(v, H, device=device), _normal(H, H, device=device), torch.zeros(H, device=device)


def primer_params(cell: str, v: int, device) -> list:
    """The primer's parameters: per gate (W_x, W_h, b), then the output layer (W_hq, b_q)."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    params = [p for _ in range(gates) for p in _gate(v, device)]
    params += [_normal(H, v, device=device), torch.zeros(v, device=device)]
    return [p.requires_grad_() for p in params]


def primer_state(cell: str):
    def init(batch_size, num_hiddens, device):
        zeros = torch.zeros((batch_size, num_hiddens), device=device)
        return (zeros, zeros.clone()) if cell == "lstm" else (zeros,)
    return init


def primer_lstm(inputs, state, params):
    W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q = params
    H_, C = state
    outputs = []
    for X in inputs:  # one time step: (B, V) one-hot
        gate_in = torch.sigmoid(X @ W_xi + H_ @ W_hi + b_i)
        gate_forget = torch.sigmoid(X @ W_xf + H_ @ W_hf + b_f)
        gate_out = torch.sigmoid(X @ W_xo + H_ @ W_ho + b_o)
        candidate = torch.tanh(X @ W_xc + H_ @ W_hc + b_c)
        C = gate_forget * C + gate_in * candidate
        H_ = gate_out * torch.tanh(C)
        outputs.append(H_ @ W_hq + b_q)
    return torch.cat(outputs, dim=0), (H_, C)


def primer_gru(inputs, state, params):
    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = params
    (H_,) = state
    outputs = []
    for X in inputs:
        update = torch.sigmoid(X @ W_xz + H_ @ W_hz + b_z)
        reset = torch.sigmoid(X @ W_xr + H_ @ W_hr + b_r)
        candidate = torch.tanh(X @ W_xh + (reset * H_) @ W_hh + b_h)
        H_ = update * H_ + (1 - update) * candidate
        outputs.append(H_ @ W_hq + b_q)
    return torch.cat(outputs, dim=0), (H_,)


def primer_rnn(inputs, state, params):
    W_xh, W_hh, b_h, W_hq, b_q = params
    (H_,) = state
    outputs = []
    for X in inputs:
        H_ = torch.tanh(X @ W_xh + H_ @ W_hh + b_h)
        outputs.append(H_ @ W_hq + b_q)
    return torch.cat(outputs, dim=0), (H_,)


def d2l_rate(cell: str, v: int, batches: list, warmup: int, device) -> float:
    """(a): tokens/s of d2l's train_epoch_ch8 with the primer's equations, over `batches` after `warmup`
    of them. (d2l's loop reads each step's loss with float(), which waits for the device: its own clock
    reads are exact on CUDA too.)"""
    forward = {"lstm": primer_lstm, "gru": primer_gru, "rnn": primer_rnn}[cell]
    net = d2l.RNNModelScratch(v, H, device, lambda vocab_size, num_hiddens, dev: primer_params(cell, vocab_size, dev),
                              primer_state(cell), forward)
    updater = lambda batch_size: d2l.sgd(net.params, 1.0, batch_size)  # noqa: E731
    loss = torch.nn.CrossEntropyLoss()
    if warmup:
        d2l.train_epoch_ch8(net, batches[:warmup], loss, updater, device, use_random_iter=True)
    _, speed = d2l.train_epoch_ch8(net, batches[warmup:], loss, updater, device, use_random_iter=True)
    return speed


def our_rate(cell: str, impl: str, v: int, batches: list, warmup: int, device, compile_mode: str) -> tuple[float, int]:
    """(b) / (c): tokens/s of primer.training.loop.fit over the same batches after `warmup` of them, and the host
    syncs of one more step (forward, backward, clip, SGD step) on a batch already on the device."""
    model = compile_model(RNNLM(v, cell, H, 1, impl).to(device), compile_mode)
    optimizer, stamps = make_optimizer(model, "sgd", 1.0), {}
    steps = len(batches) - warmup
    fit(model, optimizer, lambda epoch: timed_batches(batches, warmup, steps, device, stamps),
        lambda m, e: {"val/loss": 0.0}, FitConfig(1, grad_clip=1.0, log_every=10**9, unit="tok"),
        count=lambda x, y: x.numel())
    x, y = batches[-1]

    def step():
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    model.train()  # fit leaves the model in eval mode
    return steps * x.numel() / (stamps["end"] - stamps["start"]), syncs_per_step(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 3 with --compile)")
    parser.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated, of lstm, gru, rnn")
    add_device_args(parser)
    args = parser.parse_args()
    device = choose_device(args.device)
    cells, warmup = args.cells.split(","), untimed_steps(args.warmup, args.compile)
    text = load_corpus(args.corpus)
    vocab = Vocab(text)
    ids = torch.tensor(vocab.encode(text))
    batches = list(seq_data_iter_random(ids, B, T, torch.Generator().manual_seed(0)))[: warmup + args.batches]
    if len(batches) < warmup + args.batches:
        raise SystemExit(f"{args.corpus} gives {len(batches)} batches of {B}x{T}; {warmup} + {args.batches} are needed")
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    rates: dict[tuple, list] = {}
    syncs: dict[tuple, int] = {}
    for _ in range(args.repeats):
        for cell in cells:
            rates.setdefault((cell, "a"), []).append(d2l_rate(cell, len(vocab), batches, warmup, device))
            for key, impl in (("b", "scratch"), ("c", "fused")):
                rate, syncs[(cell, key)] = our_rate(cell, impl, len(vocab), batches, warmup, device, args.compile)
                rates.setdefault((cell, key), []).append(rate)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{args.batches} batches of {B}x{T} tokens (after {warmup} warm-up), hidden {H}, vocab {len(vocab)}; "
          f"{describe(device)}; compile {args.compile} (ours only); median of {args.repeats} rounds\n")
    print("| cell | (a) primer eqs + d2l loop, tok/s | (b) ours scratch | (c) ours fused | (b)/(a) | (c)/(a) "
          "| (b) syncs/step | (c) syncs/step |")
    print("|---|---|---|---|---|---|---|---|")
    for cell in cells:
        a, b, c = med[(cell, "a")], med[(cell, "b")], med[(cell, "c")]
        print(f"| {cell} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {b / a:.2f} | {c / a:.2f} "
              f"| {syncs[(cell, 'b')]} | {syncs[(cell, 'c')]} |")
    print(f"ratio={med[(cells[0], 'b')] / med[(cells[0], 'a')]:.2f}")


if __name__ == "__main__":
    main()
