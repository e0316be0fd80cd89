"""Evaluate every trained model on held-out data and write one report of the whole run.

CNN: test-split accuracy, precision, recall, ROC AUC, confusion matrix and a grid of misclassified
test photos. Language models: perplexity of each kept model (its best epoch) on the held-out tail of
the book and one sample each; that tail also picked the kept epoch, so the number is a validation
figure, a little optimistic, not a test set. Transformer: corpus BLEU on its
test split and example translations with attention maps. Writes metrics.json (DVC metrics), the
confusion matrix as DVC's confusion-template CSV, and report.html: one self-contained page (images
inlined) with the data summary, augmentation preview, curves and all of the above; these outputs replace
the previous run's together, once everything is computed, so they never mix two runs. Everything is
logged to one MLflow run tagged with the run ids of the training runs it evaluated. Each model whose
training run is in the same MLflow store is registered (`primer-cnn`, `primer-lm-VARIANT`,
`primer-translator`), and the alias `champion` moves to it when its test metric beats the champion's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field

from primer.atomic import outputs_together, write_text
from primer.data.table import write_table
from primer.devices import Device, pick_device
from primer.errors import PrimerError
from primer.evaluation.model_files import load_model
from primer.evaluation.translation_eval import attention_maps, d2l_examples, test_bleu
from primer.models.rnn import generate, perplexity
from primer.params import Part, Section, Sections, Seed, field_of, run_only
from primer.report import image, paragraph, table, write_report
from primer.stage import cli, open_stage, stage_parser
from primer.text.attention_plot import plot_attention_maps
from primer.text.corpus import Vocab, load_corpus, split_tail
from primer.text.sentence_pairs import read_pairs, split_pairs
from primer.training.lm_training import TrainLm
from primer.training.translation_training import TrainTransformer
from primer.vision.augment_policy import Augment
from primer.vision.binary_metrics import binary_report
from primer.vision.image_batches import eval_batches, load_arrays
from primer.vision.misclassified import plot_misclassified


class Evaluate(Section):
    batch_size: int = run_only(ge=1, le=65536)
    misclassified: int = Field(ge=0, le=400)  # test photos in the report's grid of mistakes
    examples: int = Field(ge=0, le=10_000)  # example translations in the report
    device: Device = run_only()


class Arrays(Part):
    """The stored images' sizes (augment's)."""

    train_size: int = field_of(Augment, "train_size")
    eval_size: int = field_of(Augment, "eval_size")


class LmTest(Part):
    """What train_lm held out, how it reads text and how it samples (train_lm's)."""

    val_fraction: float = field_of(TrainLm, "val_fraction")
    num_steps: int = field_of(TrainLm, "num_steps")
    prefix: str = field_of(TrainLm, "prefix")
    sample_chars: int = field_of(TrainLm, "sample_chars")


class TransformerTest(Part):
    """What train_transformer held out and how it translates (train_transformer's)."""

    num_pairs: int = field_of(TrainTransformer, "num_pairs")
    val_fraction: float = field_of(TrainTransformer, "val_fraction")
    test_fraction: float = field_of(TrainTransformer, "test_fraction")
    num_steps: int = field_of(TrainTransformer, "num_steps")
    beam_size: int = field_of(TrainTransformer, "beam_size")
    attention_sentence: str = field_of(TrainTransformer, "attention_sentence")


class Params(Sections):
    """The keys of the training sections that shape what is evaluated, and this stage's own."""

    seed: Seed
    augment: Arrays
    train_lm: LmTest
    train_transformer: TransformerTest
    evaluate: Evaluate


@torch.no_grad()
def evaluate_cnn(args, aug: Arrays, device: torch.device, batch_size: int):
    """(report, test images, test labels, P(class 1) per image)."""
    saved, model = load_model(args.cnn_model, "CNN model")
    model.to(device)
    data = load_arrays(args.arrays, aug.train_size, aug.eval_size, splits=("test",))
    images, labels = data["test"]
    probabilities = torch.cat([torch.sigmoid(model(x)[0].float()).cpu()
                               for x, _ in eval_batches(images, labels, batch_size, device, channels_last=False)])
    report = binary_report(labels, probabilities) | {"classes": saved["classes"],
                                                     "run_id": saved.get("mlflow_run_id", "")}
    return report, images, labels, probabilities


def evaluate_lms(args, p: LmTest, device: torch.device) -> list[dict]:
    corpus = load_corpus(args.corpus)
    rows = []
    for path in sorted(args.lm_models.glob("*.pt")):
        saved, model = load_model(path, "language model")
        vocab = Vocab.from_tokens(saved["vocab"])
        model.to(device)
        _, heldout = split_tail(torch.tensor(vocab.encode(corpus)), p.val_fraction)
        history = saved["history"]
        best_epoch = saved["best_epoch"]
        kept = next(r for r in history if r["epoch"] == best_epoch)
        rows.append({"variant": path.stem, "cell": saved["model_args"]["cell"],
                     "layers": saved["model_args"]["num_layers"],
                     "impl": saved["model_args"]["impl"], "epochs_run": history[-1]["epoch"], "kept_epoch": best_epoch,
                     "train_ppl": kept["train/ppl"], "kept_val_ppl": kept["val/ppl"],
                     "test_ppl": perplexity(model, heldout, p.num_steps, device),
                     "sample": generate(model, vocab, p.prefix, p.sample_chars),
                     "run_id": saved.get("mlflow_run_id", "")})
    if not rows:
        raise PrimerError(f"{args.lm_models} holds no language models (*.pt); run the train_lm stages first.")
    return rows


def evaluate_transformer(args, p: TransformerTest, seed: int, device: torch.device, examples: int) -> dict:
    saved, model = load_model(args.transformer_model, "Transformer model")
    model.to(device)
    src_vocab, tgt_vocab = Vocab.from_tokens(saved["src_vocab"]), Vocab.from_tokens(saved["tgt_vocab"])
    test = split_pairs(read_pairs(args.pairs, p.num_pairs).pairs, p.val_fraction, p.test_fraction, seed)["test"]
    bleu, rows = test_bleu(model, test, src_vocab, tgt_vocab, p.num_steps, p.beam_size, device)
    maps = attention_maps(model, p.attention_sentence, src_vocab, tgt_vocab, p.num_steps, device)
    return {"bleu": bleu, "sentences": len(rows), "examples": rows[:examples], "maps": maps,
            "d2l": d2l_examples(model, src_vocab, tgt_vocab, p.num_steps, p.beam_size, device),
            "run_id": saved.get("mlflow_run_id", "")}


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    for flag, what in [("--arrays", "augment stage output folder"), ("--cnn-model", "train_cnn's model file"),
                       ("--lm-models", "folder of train_lm model files"), ("--corpus", "The Time Machine text"),
                       ("--transformer-model", "train_transformer's model file"), ("--pairs", "fra-eng pairs file"),
                       ("--verify-summary", "verify stage summary JSON"), ("--preview", "augmentation preview PNG"),
                       ("--cnn-curves", "train_cnn's curve PNG"), ("--lm-plots", "folder of train_lm curve PNGs"),
                       ("--basics-plot", "train_basics figure"),
                       ("--metrics", "metrics JSON to write"), ("--confusion", "confusion-matrix CSV to write"),
                       ("--plots", "folder for the PNGs this stage draws"), ("--report", "report HTML to write")]:
        parser.add_argument(flag, required=True, type=Path, help=what)
    args = parser.parse_args(argv)
    check = lambda params: pick_device(params.evaluate.device, "evaluate.device")  # noqa: E731
    with open_stage("evaluate", args.params, Params, check=check) as (params, run):
        evaluate(args, params, run)


def evaluate(args, params: Params, run) -> None:
    e = params.evaluate
    device = pick_device(e.device, "evaluate.device")
    cnn, test_images, test_labels, probabilities = evaluate_cnn(args, params.augment, device, e.batch_size)
    lms = evaluate_lms(args, params.train_lm, device)
    tf = evaluate_transformer(args, params.train_transformer, params.seed, device, e.examples)
    classes = cnn["classes"]
    metrics = {"cnn/test_acc": cnn["accuracy"], "cnn/test_precision": cnn["precision"],
               "cnn/test_recall": cnn["recall"], "cnn/test_roc_auc": cnn["roc_auc"],
               "cnn/test_images": len(test_images),
               **{f"lm/{r['variant']}/test_ppl": r["test_ppl"] for r in lms},
               "transformer/test_bleu": tf["bleu"], "transformer/test_sentences": tf["sentences"],
               "transformer/d2l_bleu_k2_mean": sum(d["bleu_k2"] for d in tf["d2l"]) / len(tf["d2l"])}
    # The outputs replace the previous run's together, metrics last, so that none of them ever mixes two runs.
    outputs = [(args.plots, True), (args.confusion, False), (args.report, False), (args.metrics, False)]
    with outputs_together(outputs) as (plots, confusion, report, metrics_file):
        predicted = (probabilities >= 0.5).long()
        write_table(confusion, [{"actual": classes[int(t)], "predicted": classes[int(p)]}
                                for t, p in zip(test_labels, predicted)],
                    ["actual", "predicted"])  # one row per test image: DVC's confusion template counts them
        grid = plot_misclassified(test_images, test_labels, probabilities, classes, e.misclassified,
                                  plots / "misclassified.png")
        figures = plot_attention_maps(tf["maps"], plots, prefix="attention_")
        write_html(args, params, cnn, lms, tf, plots, report)
        write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    for name, figure in figures.items():
        run.log_figure(figure, name)
    run.log_figure(grid, "misclassified.png")
    run.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN (one-class test set) is not logged
    run.set_tags({"evaluated.train_cnn": cnn["run_id"], "evaluated.train_transformer": tf["run_id"],
                  **{f"evaluated.train_lm.{r['variant']}": r["run_id"] for r in lms}})
    run.log_artifact(args.report)
    run.log_artifact(args.confusion)
    register_models(run, cnn, lms, tf)
    print(f"evaluate: CNN test acc {cnn['accuracy']:.3f} (AUC {cnn['roc_auc']:.3f}); "
          + ", ".join(f"{r['variant']} ppl {r['test_ppl']:.2f}" for r in lms)
          + f"; Transformer test BLEU {tf['bleu']:.2f} -> {args.report}", flush=True)


def register_models(run, cnn: dict, lms: list[dict], tf: dict) -> None:
    """Each scored model into MLflow's registry; the alias `champion` moves to it only if it is better."""
    kept = [run.register_model("primer-cnn", cnn["run_id"], "test_acc", cnn["accuracy"], higher_is_better=True),
            *[run.register_model(f"primer-lm-{r['variant']}", r["run_id"], "test_ppl", r["test_ppl"],
                                 higher_is_better=False)
              for r in lms],
            run.register_model("primer-translator", tf["run_id"], "test_bleu", tf["bleu"], higher_is_better=True)]
    for registered in kept:
        if registered is not None:
            print(f"evaluate: {registered.sentence()}", flush=True)


def write_html(args, params: Params, cnn: dict, lms: list[dict], tf: dict, plots: Path, report: Path) -> None:
    summary = json.loads(args.verify_summary.read_text()) if args.verify_summary.is_file() else {}
    (tn, fp), (fn, tp) = cnn["confusion"]
    c0, c1 = cnn["classes"]
    sections = [
        ("Data", table([{"count": k, "value": v} for k, v in summary.items()])
         + image(args.preview, "augmentation preview")),
        ("Basics: the primer's regressions", image(args.basics_plot, "train_basics figure")),
        ("CNN", table([{"metric": k, "value": cnn[k]} for k in ("accuracy", "precision", "recall", "roc_auc")])
         + table([{"": f"true {c0}", f"predicted {c0}": tn, f"predicted {c1}": fp},
                  {"": f"true {c1}", f"predicted {c0}": fn, f"predicted {c1}": tp}])
         + image(args.cnn_curves, "CNN training curves")
         + paragraph("Misclassified test images (true class, P(" + c1 + ")):")
         + image(plots / "misclassified.png", "misclassified test images")),
        ("Language models", table([{k: v for k, v in r.items() if k not in ("sample", "run_id")} for r in lms])
         + table([{"variant": r["variant"], "sample": r["sample"]} for r in lms])
         + "".join(image(args.lm_plots / f"{r['variant']}.png", f"{r['variant']} perplexity") for r in lms)),
        ("Transformer", paragraph(f"Test BLEU {tf['bleu']:.2f} on {tf['sentences']} held-out English sentences "
                                  f"(beam {params.train_transformer.beam_size}).")
         + table(tf["d2l"]) + table(tf["examples"])
         + image(plots / "attention_encoder.png", "encoder self-attention")
         + image(plots / "attention_cross.png", "decoder cross-attention")),
    ]
    write_report(report, "primer: evaluation report", sections, banner=profile_banner(params.profile or "full"))


def profile_banner(profile: str) -> str:
    """The report's warning when its models were trained with the quick profile (`make demo`)."""
    if profile != "quick":
        return ""
    return ("Quick profile (make demo): every stage ran on the real data, but training used the reduced "
            "params of the 'quick' section of params.yaml, so these figures show that the pipeline works, "
            "not what the models reach. Run `make repro` for the full params.")


if __name__ == "__main__":
    raise SystemExit(cli(main, outputs_kept=True))
