"""Train the primer's Transformer encoder-decoder to translate English to French (fra-eng).

Pairs are preprocessed as d2l does (lowercase, a space before punctuation), split by English sentence
into train / val / test (no test sentence is ever seen in training), turned into word ids with
vocabularies built on the training split (min_freq; <unk> <pad> <bos> <eos>), and cut or padded to
num_steps. Training goes through the shared loop: Adam, gradient clipping, cross-entropy over
non-padding tokens (optional label smoothing), bf16 autocast on CUDA, a checkpoint every epoch that
a killed run resumes from. At the end: corpus BLEU (sacrebleu) on the test split with beam search,
d2l's BLEU (k=2) on its four sentences, a table of example translations and attention heatmaps
(encoder self-attention and decoder cross-attention, per layer and head) -- all logged to MLflow.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from primer.data.table import write_table
from primer.devices import configure_device, pick_device, use_bf16
from primer.errors import PrimerError
from primer.evaluation.translation_eval import attention_maps, d2l_examples, mean_token_loss, test_bleu
from primer.models.transformer import Seq2SeqTransformer
from primer.params import choice, flag, integer, number, output_only, result_values, run_only, text
from primer.serving.limits import MAX_BEAM_SIZE
from primer.stage import cli, open_stage, stage_parser
from primer.text.attention_plot import plot_attention_maps
from primer.text.length_batches import bucketed_batches
from primer.text.sentence_pairs import BOS, EOS, PAD, load_translation_data
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

SCHEMA = {
    "seed": integer(0),
    "train_transformer": {
        "num_pairs": integer(0),
        "val_fraction": number(0.0, 0.5),
        "test_fraction": number(0.001, 0.5),
        "min_freq": integer(1),
        "num_steps": integer(2, 1000),
        "batch_size": integer(1, 65536),
        "epochs": integer(1, 100_000),
        "lr": number(1e-7, 10),
        "grad_clip": number(0, 1e6),
        "bf16": flag(),
        "device": run_only(choice("auto", "cpu", "cuda")),
        "compile": run_only(choice(*COMPILE_MODES, false_means="off")),  # YAML reads a bare off as false
        "log_every": run_only(integer(1)),
        "beam_size": output_only(integer(1, MAX_BEAM_SIZE)),  # what it writes after training
        "examples": output_only(integer(0, 10_000)),
        "attention_sentence": output_only(text()),
        **fit_schema(),
        "model": {
            "num_hiddens": integer(2, 16384),
            "num_heads": integer(1, 256),
            "ffn_num_hiddens": integer(1, 65536),
            "num_layers": integer(1, 64),
            "dropout": number(0.0, 0.9),
            "label_smoothing": number(0.0, 0.9),
        },
    },
}


def shuffled_batches(src: torch.Tensor, tgt: torch.Tensor, batch_size: int, seed: int, device: torch.device,
                     pad: int = 1):
    """epoch -> (src, tgt) batches in an order fixed by seed and epoch (so a resumed epoch is the same): pairs
    of similar length together, each batch cut to its longest sentence (primer/text/length_batches.py).
    `pad` is `<pad>`'s id, 1 in both vocabularies that `build_vocab` makes."""
    return bucketed_batches(src, tgt, batch_size, seed, device, pad)


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--pairs", required=True, type=Path, help="tab-separated English-French file (fetch output)")
    add_training_outputs(parser)
    parser.add_argument("--translations", required=True, type=Path, help="CSV of example test translations to write")
    parser.add_argument("--attention", required=True, type=Path, help="folder for the attention heatmap PNGs")
    args = parser.parse_args(argv)
    with open_stage("train_transformer", args.params, SCHEMA, system_metrics=True, check=check_params) as (params, run):
        train(args, params, run)


def check_params(params: dict) -> None:
    p = params["train_transformer"]
    check_fit_params(p, "train_transformer")
    m = p["model"]
    if m["num_hiddens"] % m["num_heads"]:
        raise PrimerError(f"'train_transformer.model.num_hiddens' ({m['num_hiddens']}) must be divisible by "
                          f"'train_transformer.model.num_heads' ({m['num_heads']}); change one of them.")
    pick_device(p["device"], "train_transformer.device")


def train(args, params: dict, run) -> None:
    p, seed = params["train_transformer"], params["seed"]
    m = p["model"]
    device = configure_device(pick_device(p["device"], "train_transformer.device"))
    bf16 = use_bf16(device, p["bf16"])
    torch.manual_seed(seed)
    random.seed(seed)
    data = load_translation_data(args.pairs, p["num_pairs"], p["val_fraction"], p["test_fraction"], p["min_freq"],
                                 p["num_steps"], seed)
    sizes = {f"pairs/{name}": len(pairs) for name, pairs in data.splits.items()}
    skipped = {f"skipped/{reason}": n for reason, n in sorted(data.skipped.items())}
    run.log_metrics({**sizes, **skipped, "vocab/src": len(data.src_vocab), "vocab/tgt": len(data.tgt_vocab)})
    print(f"train_transformer: {sizes}, skipped lines {dict(data.skipped) or 'none'}, "
          f"vocab {len(data.src_vocab)} en / {len(data.tgt_vocab)} fr", flush=True)
    tgt = data.tgt_vocab
    model_args = {"src_vocab_size": len(data.src_vocab), "tgt_vocab_size": len(tgt), **m,
                  "pad_id": tgt[PAD], "bos_id": tgt[BOS], "eos_id": tgt[EOS]}
    model = compile_model(Seq2SeqTransformer(**model_args).to(device), p["compile"])
    optimizer = make_optimizer(model, "adam", p["lr"])
    run.set_tags({"bf16": bf16, "parameters": sum(t.numel() for t in model.parameters())})
    train_src, train_tgt = data.arrays["train"]
    val_src, val_tgt = data.arrays["val"]
    pad = model.pad_id

    def evaluate(_model, _epoch: int) -> dict:
        if not len(val_src):
            return {}
        loss = mean_token_loss(model, val_src, val_tgt, p["batch_size"], device, bf16)
        return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}

    vocabs = {"src_vocab": data.src_vocab.idx_to_token, "tgt_vocab": tgt.idx_to_token}
    metric = "val/loss" if len(val_src) else "train/epoch_loss"
    fitted = fit(
        model, optimizer, shuffled_batches(train_src, train_tgt, p["batch_size"], seed, device, pad), evaluate,
        FitConfig.from_params(p, bf16=bf16, best_metric=metric, steps_per_epoch=-(-len(train_src) // p["batch_size"]),
                              unit="tok", desc="train_transformer"),
        Checkpoint(args.checkpoint, fingerprint(model=model_args, train=result_values(p, SCHEMA["train_transformer"]),
                                                seed=seed, vocabs=vocabs, pairs=len(train_src)),
                   model_args=model_args, extra=vocabs),
        run, count=lambda x, y: (y != pad).sum(),
    )
    report(args, p, model, model_args, vocabs, data, fitted, metric, device, run)


def report(args, p: dict, model: Seq2SeqTransformer, model_args: dict, vocabs: dict, data, fitted, metric: str,
           device: torch.device, run) -> None:
    """Test BLEU, d2l's four sentences, example translations, attention heatmaps; then the training outputs."""
    steps, beam, history = p["num_steps"], p["beam_size"], fitted.history
    bleu, rows = test_bleu(model, data.splits["test"], data.src_vocab, data.tgt_vocab, steps, beam, device)
    examples = d2l_examples(model, data.src_vocab, data.tgt_vocab, steps, beam, device)
    kept = fitted.summary(metric)
    summary = {
        "train/loss": kept["train/epoch_loss"], "val/loss": kept.get("val/loss"),
        "train/tok_per_s": kept["train/tok_per_s"], "test/bleu": bleu, "test/sentences": len(rows),
        "d2l/bleu_k2_mean": sum(e["bleu_k2"] for e in examples) / len(examples),
        "epochs": kept["epochs"], "best/epoch": fitted.best_epoch, "stopped_early": fitted.stopped_early,
        "beam_size": beam, "d2l_examples": examples,
    }
    run.log_metrics({"test/bleu": bleu, "d2l/bleu_k2_mean": summary["d2l/bleu_k2_mean"]}, kept["epochs"])
    write_table(args.translations, rows[: p["examples"]], ["source", "translation", "references"])
    run.log_artifact(args.translations)
    run.log_text("\n".join(f"{e['source']} => {e['translation']} (bleu {e['bleu_k2']:.3f})" for e in examples) + "\n",
                 "d2l_examples.txt")
    maps = attention_maps(model, p["attention_sentence"], data.src_vocab, data.tgt_vocab, steps, device)
    for name, figure in plot_attention_maps(maps, args.attention).items():
        run.log_figure(figure, f"attention/{name}")
    TrainingOutputs.from_args(args).write(
        run, model, model_args, fitted, metric, summary,
        Curves("train_transformer", "curves.png",
               {"loss": [k for k in ("train/epoch_loss", "val/loss") if k in history[0]]}),
        served={"family": "Translator", "input_example": {"sentence": [p["attention_sentence"]]},
                "model_config": {"num_steps": steps, "beam_size": beam}, "params": {"beam_size": beam}},
        extra=vocabs)
    for e in examples:
        print(f"train_transformer: {e['source']!r} => {e['translation']!r}, bleu {e['bleu_k2']:.3f}", flush=True)
    print(f"train_transformer: test BLEU {bleu:.2f} on {len(rows)} sentences (beam {beam})", flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main))
