"""Train one character-level language model variant on The Time Machine (train_lm.variants.NAME).

A variant names its model (`cell` rnn | lstm | gru, `num_hiddens`, `num_layers`, `impl` scratch |
fused) and its SGD learning rate; the rest is shared: batch size and steps per subsequence (32 x 35
as d2l), random or sequential minibatches, gradient clipping (the primer's remedy for exploding
gradients), epochs, the lr schedule and `min_delta`; each variant sets its own early stopping
(`patience` epochs without a val/ppl drop of more than `min_delta`; 0 = off). The tail `val_fraction`
of the book is held out for validation perplexity; the model of the epoch with the lowest val/ppl is
the one written. Every
`sample_every` epochs the model continues `prefix` for `sample_chars` characters, logged as text.
The vocabulary (derived from the corpus) is saved with the model and every checkpoint; a killed run
resumes from --checkpoint. Each variant is one MLflow run, with the same metric names for all, so the
MLflow compare view overlays their val/ppl curves.
One variant per process (one per GPU) is the default; `nproc` over 1 trains this variant on several
(DDP; with nnodes and rdzv_endpoint on several hosts, docs/training.md), each rank on its rows of every
batch of batch_size. Only rank 0 samples, logs and writes.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from primer import distributed
from primer.models.rnn import RNNLM, generate, perplexity
from primer.stage import cli, load_checked, open_stage, stage_parser
from primer.text.corpus import Vocab, load_corpus, num_batches, split_tail
from primer.training.checkpoint import Checkpoint, seed_everything
from primer.training.lm_training import LmParams, check_lm_params, epoch_batches, lm_fingerprint
from primer.training.loop import FitConfig, compile_model, fit, make_optimizer
from primer.training.outputs import Curves, TrainingOutputs, add_training_outputs

Params = LmParams  # what this stage reads
KEPT = ("train/ppl", "val/ppl", "train/tok_per_s", "epochs", "best/epoch", "best/val_ppl", "stopped_early",
        "time/epoch_s", "time/host")


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--variant", required=True, help="name under train_lm.variants")
    parser.add_argument("--corpus", required=True, type=Path, help="the text (fetch output)")
    add_training_outputs(parser)
    args = parser.parse_args(argv)
    corpus = load_corpus(args.corpus)
    check = partial(check_lm_params, args.variant, args.corpus, len(corpus))
    p = load_checked(args.params, LmParams, check).train_lm  # fail on bad params before any launch
    device = distributed.start(__file__, p, p.device, "train_lm")
    if device is None:
        return  # this process was the node's agent: its ranks trained
    try:
        with open_stage(f"train_lm@{args.variant}", args.params, LmParams, system_metrics=True, check=check) as (
                params, run):
            train(args, params, run, corpus, device)
    finally:
        distributed.teardown()


def train(args, params: LmParams, run, corpus: str, device: torch.device) -> None:
    p, seed = params.train_lm, params.seed
    variant = p.variants[args.variant]
    seed_everything(seed)
    vocab = Vocab(corpus)
    ids = torch.tensor(vocab.encode(corpus), dtype=torch.long)
    train_ids, val_ids = split_tail(ids, p.val_fraction)
    model_args = {"vocab_size": len(vocab), **variant.model.model_dump()}
    model = compile_model(RNNLM(**model_args).to(device), p.compile)
    net = distributed.wrap(model, device)
    optimizer = make_optimizer(net, "sgd", variant.lr)
    run.set_tags({"variant": args.variant, "vocab_size": len(vocab), "train_chars": len(train_ids),
                  "val_chars": len(val_ids), "world_size": distributed.world()})

    def evaluate(_model, epoch: int) -> dict:  # every rank: the same weights and text give the same val/ppl
        if distributed.is_main() and (epoch % p.sample_every == 0 or epoch == p.epochs):
            sample = generate(model, vocab, p.prefix, p.sample_chars)
            run.log_text(sample + "\n", f"samples/epoch_{epoch:05d}.txt")
            print(f"train_lm@{args.variant} epoch {epoch}: {sample!r}", flush=True)
        return {"val/ppl": perplexity(model, val_ids, p.num_steps, device)}

    def log(metrics: dict, step: int) -> None:
        if "train/epoch_loss" in metrics:  # an epoch's summary: add its training perplexity
            metrics = {**metrics, "train/ppl": math.exp(metrics["train/epoch_loss"])}
        run.log_metrics(metrics, step)

    steps = num_batches(len(train_ids), p.batch_size, p.num_steps, p.sampling == "sequential")
    fitted = fit(
        net, optimizer, epoch_batches(model, train_ids, p.sampling, p.batch_size, p.num_steps, seed, device), evaluate,
        FitConfig.of(p, patience=variant.patience, best_metric="val/ppl", steps_per_epoch=steps, unit="tok",
                     desc=f"train_lm@{args.variant}"),
        Checkpoint(args.checkpoint, lm_fingerprint(params, args.variant, model_args, vocab.idx_to_token, len(ids)),
                   model_args=model_args, extra={"vocab": vocab.idx_to_token}),
        SimpleNamespace(log_metrics=log, flush=run.flush), count=lambda x, y: x.numel(),
    )
    if not distributed.is_main():
        return
    for row in fitted.history:
        row["train/ppl"] = math.exp(row["train/epoch_loss"])
    sample = generate(model, vocab, p.prefix, p.sample_chars)
    summary = {k: v for k, v in fitted.summary("val/ppl").items() if k in KEPT} | {"sample": sample}
    TrainingOutputs.from_args(args).write(
        run, model, model_args, fitted, "val/ppl", summary,
        Curves(f"train_lm@{args.variant}", "perplexity.png", {"perplexity": ["train/ppl", "val/ppl"]}),
        served={"family": "TextGenerator", "input_example": {"prefix": [p.prefix], "length": [p.sample_chars]}},
        extra={"vocab": vocab.idx_to_token})
    print(f"train_lm@{args.variant}: kept epoch {fitted.best_epoch} of {summary['epochs']}: "
          f"train ppl {summary['train/ppl']:.2f}, val ppl {summary['val/ppl']:.2f}; {sample!r}", flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main))
