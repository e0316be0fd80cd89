"""What the Transformer stage reports once trained: test BLEU with beam search, d2l's four sentences,
example translations and attention heatmaps, logged to its run; then its training outputs."""

from __future__ import annotations

import torch

from primer.data.table import write_table
from primer.evaluation.translation_eval import attention_maps, d2l_examples, test_bleu
from primer.models.transformer import Seq2SeqTransformer
from primer.text.attention_plot import plot_attention_maps
from primer.training.outputs import Curves, TrainingOutputs
from primer.training.translation_training import TrainTransformer


def report_translator(args, p: TrainTransformer, model: Seq2SeqTransformer, model_args: dict, vocabs: dict, data,
                      fitted, metric: str, device: torch.device, run) -> None:
    """Test BLEU, d2l's four sentences, example translations, attention heatmaps; then the training outputs."""
    steps, beam, history = p.num_steps, p.beam_size, fitted.history
    bleu, rows = test_bleu(model, data.splits["test"], data.src_vocab, data.tgt_vocab, steps, beam, device)
    examples = d2l_examples(model, data.src_vocab, data.tgt_vocab, steps, beam, device)
    kept = fitted.summary(metric)
    summary = {
        "train/loss": kept["train/epoch_loss"], "val/loss": kept.get("val/loss"),
        "train/tok_per_s": kept["train/tok_per_s"], "test/bleu": bleu, "test/sentences": len(rows),
        "d2l/bleu_k2_mean": sum(e["bleu_k2"] for e in examples) / len(examples),
        "epochs": kept["epochs"], "best/epoch": fitted.best_epoch, "stopped_early": fitted.stopped_early,
        "beam_size": beam, "d2l_examples": examples, **fitted.timing(),
    }
    run.log_metrics({"test/bleu": bleu, "d2l/bleu_k2_mean": summary["d2l/bleu_k2_mean"]}, kept["epochs"])
    write_table(args.translations, rows[: p.examples], ["source", "translation", "references"])
    run.log_artifact(args.translations)
    run.log_text("\n".join(f"{e['source']} => {e['translation']} (bleu {e['bleu_k2']:.3f})" for e in examples) + "\n",
                 "d2l_examples.txt")
    maps = attention_maps(model, p.attention_sentence, data.src_vocab, data.tgt_vocab, steps, device)
    for name, figure in plot_attention_maps(maps, args.attention).items():
        run.log_figure(figure, f"attention/{name}")
    TrainingOutputs.from_args(args).write(
        run, model, model_args, fitted, metric, summary,
        Curves("train_transformer", "curves.png",
               {"loss": [k for k in ("train/epoch_loss", "val/loss") if k in history[0]]}),
        served={"family": "Translator", "input_example": {"sentence": [p.attention_sentence]},
                "model_config": {"num_steps": steps, "beam_size": beam}, "params": {"beam_size": beam}},
        extra=vocabs)
    for e in examples:
        print(f"train_transformer: {e['source']!r} => {e['translation']!r}, bleu {e['bleu_k2']:.3f}", flush=True)
    print(f"train_transformer: test BLEU {bleu:.2f} on {len(rows)} sentences (beam {beam})", flush=True)
