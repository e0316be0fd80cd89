"""Transformer training throughput: our encoder vs d2l 0.17.6's, our whole model vs nn.Transformer.

On the same minibatches of real fra-eng pairs (d2l's preprocessing, num_steps padding), already on
--device, one process, training tokens/s (non-padding tokens: source tokens for the encoders, target
tokens for the whole models) of:
  (a) d2l 0.17.6's TransformerEncoder (explicit bmm/softmax attention; installed --no-deps, see
      benchmarks/requirements.txt) against primer's TransformerEncoder (F.scaled_dot_product_attention),
      both under the same linear head and token cross-entropy, Adam;
  (a') the same stand-in task with no encoder at all (embedding, head, loss): the share both encoders
      pay, so the encoders' own times can be told apart;
  (b) PyTorch's nn.Transformer with the same embeddings, positional encoding and output layer against
      primer's Seq2SeqTransformer, teacher forcing, padding-masked cross-entropy, Adam.
At d2l's size (num_hiddens 32, 2 layers, 4 heads, ffn 64, dropout 0.1, batch 64, num_steps 10) and a
larger one (256, 4 layers, 8 heads, ffn 1024, batch 128, num_steps 20), after 3 untimed steps. Median
of --repeats interleaved rounds; ms/step at the median rate. --compile applies torch.compile to our
encoder and our Seq2SeqTransformer only. syncs/step: the host syncs of one more step of our
Seq2SeqTransformer (forward, backward, clip, Adam step), counted outside the timed region. Last line:
`ratio=X.XX` for ours / d2l's encoder at the first size.

    python benchmarks/transformer_throughput.py [--pairs fra.txt|fra-eng.zip] [--steps 30] [--repeats 5]
        [--sizes d2l,large] [--device auto|cpu|cuda] [--compile off|default|reduce-overhead]

`--size default` times the stage's own training path at params.yaml's size instead, beside another
checkout's (benchmarks/transformer_default.py: `--size default --help`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from primer.models.transformer import PositionalEncoding, Seq2SeqTransformer, TransformerEncoder, padding_mask
from primer.text.sentence_pairs import BOS, EOS, PAD, build_vocab, preprocess_nmt, to_array
from primer.training.loop import compile_model, make_optimizer

from bench_device import COMPILE_WARMUP, add_device_args, choose_device, clock, describe, syncs_per_step

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "d2l" / "fra-eng.zip"
WARMUP = COMPILE_WARMUP  # untimed steps, enough for torch.compile too
SIZES = {
    "d2l": dict(num_hiddens=32, num_layers=2, num_heads=4, ffn_num_hiddens=64, dropout=0.1,
                batch_size=64, num_steps=10),
    "large": dict(num_hiddens=256, num_layers=4, num_heads=8, ffn_num_hiddens=1024, dropout=0.1,
                  batch_size=128, num_steps=20),
}


def load_pairs(path: Path, count: int):
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            text = zf.read("fra-eng/fra.txt").decode("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    pairs = []
    for line in preprocess_nmt(text).split("\n"):
        parts = line.split("\t")
        if len(parts) == 2 and parts[0].strip() and parts[1].strip():
            pairs.append((parts[0].split(), parts[1].split()))
    step = max(1, len(pairs) // count)  # spread over the file: it is sorted by length
    return pairs[::step][:count]


def make_batches(pairs, num_steps: int, batch_size: int, n: int):
    src_vocab, tgt_vocab = build_vocab([s for s, _ in pairs]), build_vocab([t for _, t in pairs])
    src, tgt = (to_array([s for s, _ in pairs], src_vocab, num_steps),
                to_array([t for _, t in pairs], tgt_vocab, num_steps))
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        rows = torch.randint(len(src), (batch_size,), generator=g)
        batches.append((src[rows], tgt[rows]))
    return batches, len(src_vocab), len(tgt_vocab)


class D2LEncoderLM(nn.Module):
    """d2l's encoder + a linear head predicting each source token's target-side id (a stand-in task)."""

    def __init__(self, vocab, out, s):
        super().__init__()
        from d2l import torch as d2l  # only these sizes need d2l (benchmarks/requirements.txt)

        d = s["num_hiddens"]
        self.encoder = d2l.TransformerEncoder(vocab, d, d, d, d, [d], d, s["ffn_num_hiddens"], s["num_heads"],
                                              s["num_layers"], s["dropout"])
        self.head = nn.Linear(d, out)

    def forward(self, src, tgt):
        valid = (src != 1).sum(1)
        logits = self.head(self.encoder(src, valid))
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=1)


class OurEncoderLM(nn.Module):
    def __init__(self, vocab, out, s):
        super().__init__()
        self.encoder = TransformerEncoder(vocab, s["num_hiddens"], s["num_heads"], s["ffn_num_hiddens"],
                                          s["num_layers"], s["dropout"])
        self.head = nn.Linear(s["num_hiddens"], out)

    def forward(self, src, tgt):
        logits = self.head(self.encoder(src, padding_mask(src, 1)))
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=1)


class HeadOnlyLM(nn.Module):
    """The encoders' stand-in task without an encoder: embedding, head, loss. What both encoders share."""

    def __init__(self, vocab, out, s):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, s["num_hiddens"]), nn.Linear(s["num_hiddens"], out)

    def forward(self, src, tgt):
        return F.cross_entropy(self.head(self.embed(src)).flatten(0, 1), tgt.flatten(), ignore_index=1)


class TorchSeq2Seq(nn.Module):
    """nn.Transformer with the same embeddings (scaled), positional encoding and output layer as ours."""

    def __init__(self, src_vocab, tgt_vocab, s):
        super().__init__()
        d = self.d = s["num_hiddens"]
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, d), nn.Embedding(tgt_vocab, d)
        self.pos = PositionalEncoding(d, s["dropout"])
        self.transformer = nn.Transformer(d, s["num_heads"], s["num_layers"], s["num_layers"], s["ffn_num_hiddens"],
                                          s["dropout"], batch_first=True)
        self.dense = nn.Linear(d, tgt_vocab)

    def forward(self, src, tgt):
        tgt_in = torch.cat([torch.full_like(tgt[:, :1], 2), tgt[:, :-1]], 1)
        future = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        out = self.transformer(self.pos(self.src_embed(src) * math.sqrt(self.d)),
                               self.pos(self.tgt_embed(tgt_in) * math.sqrt(self.d)),
                               tgt_mask=future, src_key_padding_mask=src == 1, memory_key_padding_mask=src == 1,
                               tgt_is_causal=True)
        return F.cross_entropy(self.dense(out).flatten(0, 1), tgt.flatten(), ignore_index=1)


class OurSeq2Seq(nn.Module):
    def __init__(self, src_vocab, tgt_vocab, s):
        super().__init__()
        self.model = Seq2SeqTransformer(src_vocab, tgt_vocab, s["num_hiddens"], s["num_heads"], s["ffn_num_hiddens"],
                                        s["num_layers"], s["dropout"], pad_id=1, bos_id=2, eos_id=3)

    def forward(self, src, tgt):
        return self.model(src, tgt)[1]


def train_step(model: nn.Module, optimizer, src, tgt) -> None:
    loss = model(src, tgt)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def tokens_per_second(model: nn.Module, batches, tokens: int, device, count_syncs=False) -> tuple[float, int | str]:
    """Tokens/s over batches[WARMUP:] (`tokens` of them, counted on the host beforehand), and the host
    syncs of one more step when `count_syncs` ("-" otherwise)."""
    optimizer = make_optimizer(model, "adam", 1e-3)  # fused on CUDA, as the stages train (every model alike)
    model.train()
    for src, tgt in batches[:WARMUP]:
        train_step(model, optimizer, src, tgt)
    start = clock(device)
    for src, tgt in batches[WARMUP:]:
        train_step(model, optimizer, src, tgt)
    rate = tokens / (clock(device) - start)
    return rate, syncs_per_step(lambda: train_step(model, optimizer, *batches[-1])) if count_syncs else "-"


def main() -> None:
    if "--size" in sys.argv[1:]:
        from transformer_default import main as default_size

        return default_size(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="fra.txt or d2l's fra-eng.zip")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="d2l,large")
    add_device_args(parser)
    args = parser.parse_args()
    device = choose_device(args.device)
    assert (PAD, BOS, EOS) == ("<pad>", "<bos>", "<eos>")  # ids 1, 2, 3 after <unk>, as the models above assume
    pairs = load_pairs(args.pairs, 20_000)
    print(f"torch {torch.__version__}, {describe(device)}, compile {args.compile} (ours only)")
    ratios = {}
    for size in args.sizes.split(","):
        s = SIZES[size]
        batches, vs, vt = make_batches(pairs, s["num_steps"], s["batch_size"], args.steps + WARMUP)
        # non-padding tokens of the timed batches, counted here: a count read back per step would sync
        src_tokens = sum(int((src != 1).sum()) for src, _ in batches[WARMUP:])
        tgt_tokens = sum(int((tgt != 1).sum()) for _, tgt in batches[WARMUP:])
        batches = [(src.to(device), tgt.to(device)) for src, tgt in batches]
        ours = lambda model: compile_model(model.to(device), args.compile)  # noqa: E731
        builders = {  # name: (model, tokens, whether to count its syncs)
            "d2l encoder": (lambda: D2LEncoderLM(vs, vt, s).to(device), src_tokens, False),
            "our encoder": (lambda: ours(OurEncoderLM(vs, vt, s)), src_tokens, False),
            "embedding + head, no encoder": (lambda: HeadOnlyLM(vs, vt, s).to(device), src_tokens, False),
            "nn.Transformer": (lambda: TorchSeq2Seq(vs, vt, s).to(device), tgt_tokens, False),
            "our Seq2SeqTransformer": (lambda: ours(OurSeq2Seq(vs, vt, s)), tgt_tokens, True),
        }
        results, syncs = {name: [] for name in builders}, {}
        for _ in range(args.repeats):
            for name, (build, tokens, count_syncs) in builders.items():
                torch.manual_seed(0)
                rate, syncs[name] = tokens_per_second(build(), batches, tokens, device, count_syncs)
                results[name].append(rate)
        medians = {name: statistics.median(v) for name, v in results.items()}
        print(f"\nsize {size}: {s}")
        print(f"| model | tokens/s (median of {args.repeats}) | min | max | ms/step | syncs/step |")
        print("|---|---|---|---|---|---|")
        for name, values in results.items():
            ms = 1000 * builders[name][1] / args.steps / medians[name]  # at the median rate
            print(f"| {name} | {medians[name]:,.0f} | {min(values):,.0f} | {max(values):,.0f} | {ms:.2f} "
                  f"| {syncs[name]} |")
        ratios[size] = (medians["our encoder"] / medians["d2l encoder"],
                        medians["our Seq2SeqTransformer"] / medians["nn.Transformer"])
        print(f"ours / d2l encoder: {ratios[size][0]:.2f} (target >= 2); "
              f"ours / nn.Transformer: {ratios[size][1]:.2f} (target >= 0.9)")
        shared = 1e6 / medians["embedding + head, no encoder"]  # microseconds per token outside the encoder
        own = {name: 1e6 / medians[name] - shared for name in ("d2l encoder", "our encoder")}
        print(f"encoder's own time: d2l {own['d2l encoder']:.1f} us/token, ours {own['our encoder']:.1f} us/token "
              f"-> d2l / ours {own['d2l encoder'] / own['our encoder']:.2f}; the shared part is "
              f"{shared / (shared + own['d2l encoder']):.0%} of d2l's step, so even a free encoder would give at most "
              f"{medians['embedding + head, no encoder'] / medians['d2l encoder']:.2f} x")
    first = next(iter(ratios))
    print(f"ratio={ratios[first][0]:.2f}")


if __name__ == "__main__":
    main()
