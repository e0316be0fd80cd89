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
"""

from __future__ import annotations

import math
import random
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from primer.devices import configure_device, pick_device
from primer.errors import PrimerError
from primer.models.rnn import RNNLM, generate, perplexity
from primer.params import choice, each_of, integer, number, output_only, result_values, run_only, text
from primer.stage import cli, open_stage, stage_parser
from primer.text.corpus import (
    Vocab,
    epoch_positions,
    gather_batches,
    load_corpus,
    num_batches,
    seq_data_iter_random,
    seq_data_iter_sequential,
    split_tail,
)
from primer.training.checkpoint import Checkpoint, fingerprint
from primer.training.loop import (
    COMPILE_MODES,
    FitConfig,
    check_fit_params,
    compile_model,
    fit,
    fit_schema,
    make_optimizer,
)
from primer.training.outputs import Curves, TrainingOutputs, add_training_outputs

VARIANT = {
    "model": {"cell": choice("rnn", "lstm", "gru"), "num_hiddens": integer(1, 8192), "num_layers": integer(1, 16),
              "impl": choice("scratch", "fused"), "dropout": number(0, 0.9)},
    "lr": number(1e-6, 100),
    "patience": integer(0, 100_000),  # per variant: the plain RNN still improves slowly where gated cells overfit
}
SCHEMA = {
    "seed": integer(0),
    "train_lm": {
        "val_fraction": number(0.01, 0.5),
        "batch_size": integer(1, 4096),
        "num_steps": integer(1, 10_000),
        "sampling": choice("random", "sequential"),
        "epochs": integer(1, 100_000),
        "grad_clip": number(0, 1e6),
        "sample_every": run_only(integer(1)),
        "sample_chars": output_only(integer(1, 10_000)),  # the sample in its metrics
        "prefix": output_only(text()),
        "log_every": run_only(integer(1)),
        "device": run_only(choice("auto", "cpu", "cuda")),
        "compile": run_only(choice(*COMPILE_MODES, false_means="off")),  # YAML reads a bare off as false
        "val_every": integer(1, 100_000),
        "checkpoint_every": run_only(integer(1, 100_000)),
        **{k: v for k, v in fit_schema().items() if k != "patience"},
        "variants": each_of(VARIANT),
    },
}


def shared_results(p: dict) -> dict:
    """The train_lm result fields that every variant shares (a checkpoint's fingerprint): another
    variant's change leaves this one's checkpoint valid."""
    return {k: v for k, v in result_values(p, SCHEMA["train_lm"]).items() if k != "variants"}


def sampler(p: dict):
    """d2l's minibatch iterator that train_lm.sampling names."""
    return seq_data_iter_sequential if p["sampling"] == "sequential" else seq_data_iter_random


def batches_for(model: RNNLM, ids: torch.Tensor, p: dict, seed: int, device: torch.device):
    """epoch -> (X, Y) minibatches on the device; sequential sampling carries the state across them.

    The corpus lives on the device; each epoch draws its positions on the host (d2l's samplers, seeded by
    seed and epoch) and sends them over once, so every step gathers its batch on the device."""
    sequential, on_device = p["sampling"] == "sequential", ids.to(device)

    def batches(epoch: int):
        model.reset_state()
        model.carry_state = sequential
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        positions = epoch_positions(len(ids), p["batch_size"], p["num_steps"], sequential, generator)
        return gather_batches(on_device, positions.to(device))

    return batches


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--variant", required=True, help="name under train_lm.variants")
    parser.add_argument("--corpus", required=True, type=Path, help="the text (fetch output)")
    add_training_outputs(parser)
    args = parser.parse_args(argv)
    corpus = load_corpus(args.corpus)
    with open_stage(f"train_lm@{args.variant}", args.params, SCHEMA, system_metrics=True,
                    check=partial(check_params, args.variant, args.corpus, len(corpus))) as (params, run):
        train(args, params, run, corpus)


KEPT = ("train/ppl", "val/ppl", "train/tok_per_s", "epochs", "best/epoch", "best/val_ppl", "stopped_early")


def check_params(variant: str, corpus_file: Path, corpus_chars: int, params: dict) -> None:
    """The variant exists, the device too, and the corpus is long enough for these params."""
    p = params["train_lm"]
    check_fit_params(p, "train_lm")
    if variant not in p["variants"]:
        raise PrimerError(f"no variant '{variant}' under 'train_lm.variants' (have: {', '.join(p['variants'])}); "
                          "add it or pick one of those.")
    pick_device(p["device"], "train_lm.device")
    if p["sample_every"] % p["val_every"]:  # samples are written when the model is evaluated
        raise PrimerError(f"'train_lm.sample_every' ({p['sample_every']}) must be a multiple of 'train_lm.val_every' "
                          f"({p['val_every']}), since samples are written at validation; change one of them.")
    if p["compile"] == "reduce-overhead" and p["sampling"] == "sequential":
        raise PrimerError("'train_lm.compile' is 'reduce-overhead', whose CUDA graphs reuse their output buffers, but "
                          "'train_lm.sampling' is 'sequential', which carries the state across steps; use 'default' or "
                          "sampling 'random'.")
    train_ids, val_ids = split_tail(torch.zeros(corpus_chars, dtype=torch.long), p["val_fraction"])
    sampler(p)(train_ids, p["batch_size"], p["num_steps"], torch.Generator())  # too short a corpus fails here
    if len(val_ids) < 2:
        raise PrimerError(f"{corpus_file} leaves only {len(val_ids)} character(s) for validation; "
                          "raise 'train_lm.val_fraction'.")


def train(args, params: dict, run, corpus: str) -> None:
    p, seed = params["train_lm"], params["seed"]
    variant = p["variants"][args.variant]
    device = configure_device(pick_device(p["device"], "train_lm.device"))
    torch.manual_seed(seed)
    random.seed(seed)
    vocab = Vocab(corpus)
    ids = torch.tensor(vocab.encode(corpus), dtype=torch.long)
    train_ids, val_ids = split_tail(ids, p["val_fraction"])
    model_args = {"vocab_size": len(vocab), **variant["model"]}
    model = compile_model(RNNLM(**model_args).to(device), p["compile"])
    optimizer = make_optimizer(model, "sgd", variant["lr"])
    run.set_tags({"variant": args.variant, "vocab_size": len(vocab), "train_chars": len(train_ids),
                  "val_chars": len(val_ids)})

    def evaluate(_model, epoch: int) -> dict:
        if epoch % p["sample_every"] == 0 or epoch == p["epochs"]:
            sample = generate(model, vocab, p["prefix"], p["sample_chars"])
            run.log_text(sample + "\n", f"samples/epoch_{epoch:05d}.txt")
            print(f"train_lm@{args.variant} epoch {epoch}: {sample!r}", flush=True)
        return {"val/ppl": perplexity(model, val_ids, p["num_steps"], device)}

    def log(metrics: dict, step: int) -> None:
        if "train/epoch_loss" in metrics:  # an epoch's summary: add its training perplexity
            metrics = {**metrics, "train/ppl": math.exp(metrics["train/epoch_loss"])}
        run.log_metrics(metrics, step)

    steps = num_batches(len(train_ids), p["batch_size"], p["num_steps"], p["sampling"] == "sequential")
    fitted = fit(
        model, optimizer, batches_for(model, train_ids, p, seed, device), evaluate,
        FitConfig.from_params(p, patience=variant["patience"], best_metric="val/ppl", steps_per_epoch=steps,
                              unit="tok", desc=f"train_lm@{args.variant}"),
        Checkpoint(args.checkpoint, fingerprint(model=model_args, variant=result_values(variant, VARIANT),
                                                train=shared_results(p), seed=seed, vocab=vocab.idx_to_token,
                                                chars=len(ids)),
                   model_args=model_args, extra={"vocab": vocab.idx_to_token}),
        SimpleNamespace(log_metrics=log, flush=run.flush), count=lambda x, y: x.numel(),
    )
    for row in fitted.history:
        row["train/ppl"] = math.exp(row["train/epoch_loss"])
    sample = generate(model, vocab, p["prefix"], p["sample_chars"])
    summary = {k: v for k, v in fitted.summary("val/ppl").items() if k in KEPT} | {"sample": sample}
    TrainingOutputs.from_args(args).write(
        run, model, model_args, fitted, "val/ppl", summary,
        Curves(f"train_lm@{args.variant}", "perplexity.png", {"perplexity": ["train/ppl", "val/ppl"]}),
        served={"family": "TextGenerator", "input_example": {"prefix": [p["prefix"]], "length": [p["sample_chars"]]}},
        extra={"vocab": vocab.idx_to_token})
    print(f"train_lm@{args.variant}: kept epoch {fitted.best_epoch} of {summary['epochs']}: "
          f"train ppl {summary['train/ppl']:.2f}, val ppl {summary['val/ppl']:.2f}; {sample!r}", flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main))
