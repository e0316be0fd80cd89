"""Train the primer's Transformer encoder-decoder to translate English to French (fra-eng).

Pairs are preprocessed as d2l does (lowercase, a space before punctuation), split by English sentence
into train / val / test (no test sentence is ever seen in training), turned into word ids with
vocabularies built on the training split (min_freq; <unk> <pad> <bos> <eos>), and cut or padded to
num_steps. Training goes through the shared loop: Adam, gradient clipping, cross-entropy over
non-padding tokens (optional label smoothing), bf16 autocast on CUDA, a checkpoint every epoch that
a killed run resumes from. At the end: corpus BLEU (sacrebleu) on the test split with beam search,
d2l's BLEU (k=2) on its four sentences, a table of example translations and attention heatmaps
(encoder self-attention and decoder cross-attention, per layer and head) -- all logged to MLflow.
Several processes (DDP): set train_transformer.nproc (and nnodes, rdzv_endpoint for several hosts;
docs/training.md); each rank trains on its share of every batch of batch_size, every rank validates on
the whole val split, and only rank 0 translates, logs and writes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from primer import distributed
from primer.devices import use_bf16
from primer.evaluation.translation_eval import mean_token_loss
from primer.evaluation.translation_report import report_translator
from primer.models.transformer import Seq2SeqTransformer
from primer.params import result_values
from primer.stage import cli, load_checked, open_stage, stage_parser
from primer.text.length_batches import bucketed_batches
from primer.text.sentence_pairs import BOS, EOS, PAD, load_translation_data
from primer.training.checkpoint import Checkpoint, fingerprint, seed_everything
from primer.training.loop import FitConfig, compile_model, fit, make_optimizer
from primer.training.outputs import add_training_outputs
from primer.training.translation_training import TransformerParams, check_transformer_params, data_sizes, describe_data

Params = TransformerParams  # what this stage reads


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--pairs", required=True, type=Path, help="tab-separated English-French file (fetch output)")
    add_training_outputs(parser)
    parser.add_argument("--translations", required=True, type=Path, help="CSV of example test translations to write")
    parser.add_argument("--attention", required=True, type=Path, help="folder for the attention heatmap PNGs")
    args = parser.parse_args(argv)
    p = load_checked(args.params, TransformerParams, check_transformer_params).train_transformer
    device = distributed.start(__file__, p, p.device, "train_transformer")
    if device is None:
        return  # this process was the node's agent: its ranks trained
    try:
        with open_stage("train_transformer", args.params, TransformerParams, system_metrics=True,
                        check=check_transformer_params) as (params, run):
            train(args, params, run, device)
    finally:
        distributed.teardown()


def train(args, params: TransformerParams, run, device: torch.device) -> None:
    p, seed = params.train_transformer, params.seed
    bf16 = use_bf16(device, p.bf16)
    seed_everything(seed)
    data = load_translation_data(args.pairs, p.num_pairs, p.val_fraction, p.test_fraction, p.min_freq, p.num_steps,
                                 seed)
    run.log_metrics(data_sizes(data))
    print(f"train_transformer: {describe_data(data)}", flush=True)
    tgt = data.tgt_vocab
    model_args = {"src_vocab_size": len(data.src_vocab), "tgt_vocab_size": len(tgt), **p.model.model_dump(),
                  "pad_id": tgt[PAD], "bos_id": tgt[BOS], "eos_id": tgt[EOS]}
    model = compile_model(Seq2SeqTransformer(**model_args).to(device), p.compile)
    net = distributed.wrap(model, device)
    optimizer = make_optimizer(net, "adam", p.lr)
    run.set_tags({"bf16": bf16, "parameters": sum(t.numel() for t in model.parameters()),
                  "world_size": distributed.world()})
    train_src, train_tgt = data.arrays["train"]
    val_src, val_tgt = data.arrays["val"]
    pad = model.pad_id

    def evaluate(_model, _epoch: int) -> dict:  # every rank: the same weights and pairs give the same loss
        if not len(val_src):
            return {}
        loss = mean_token_loss(model, val_src, val_tgt, p.batch_size, device, bf16)
        return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}

    vocabs = {"src_vocab": data.src_vocab.idx_to_token, "tgt_vocab": tgt.idx_to_token}
    metric = "val/loss" if len(val_src) else "train/epoch_loss"
    fitted = fit(
        net, optimizer, bucketed_batches(train_src, train_tgt, p.batch_size, seed, device, pad), evaluate,
        FitConfig.of(p, patience=p.patience, bf16=bf16, best_metric=metric, unit="tok", desc="train_transformer",
                     steps_per_epoch=-(-len(train_src) // p.batch_size)),
        Checkpoint(args.checkpoint, fingerprint(model=model_args, params=result_values(params.model_dump(),
                                                                                       TransformerParams),
                                                vocabs=vocabs, pairs=len(train_src), world=distributed.world()),
                   model_args=model_args, extra=vocabs),
        run, count=lambda x, y: (y != pad).sum(),
    )
    if distributed.is_main():
        report_translator(args, p, model, model_args, vocabs, data, fitted, metric, device, run)


if __name__ == "__main__":
    raise SystemExit(cli(main))
