"""What training the English-French Transformer takes: the `train_transformer` params section, its
checks, and the data sizes it reports before training."""

from __future__ import annotations

from pydantic import Field

from primer.devices import Device, pick_device
from primer.distributed import Launch, check_launch
from primer.errors import PrimerError
from primer.limits import MAX_BEAM_SIZE
from primer.params import Part, Section, Sections, Seed, field_of, output_only, run_only
from primer.training.fit_params import CompileMode, FitParams, Patience, check_fit_params


class TransformerModel(Section):
    """`Seq2SeqTransformer`'s arguments (vocabulary sizes and special ids come from the data)."""

    num_hiddens: int = Field(ge=2, le=16384)
    num_heads: int = Field(ge=1, le=256)
    ffn_num_hiddens: int = Field(ge=1, le=65536)
    num_layers: int = Field(ge=1, le=64)
    dropout: float = Field(ge=0, le=0.9)
    label_smoothing: float = Field(ge=0, le=0.9)


class TrainTransformer(FitParams, Launch):
    num_pairs: int = Field(ge=0)  # the first N lines of fra-eng; 0 = all
    val_fraction: float = Field(ge=0, le=0.5)
    test_fraction: float = Field(ge=0.001, le=0.5)
    min_freq: int = Field(ge=1)
    num_steps: int = Field(ge=2, le=1000)
    batch_size: int = Field(ge=1, le=65536)
    lr: float = Field(ge=1e-7, le=10)
    bf16: bool
    patience: Patience
    beam_size: int = output_only(ge=1, le=MAX_BEAM_SIZE)  # what it writes after training
    examples: int = output_only(ge=0, le=10_000)
    attention_sentence: str = output_only()
    device: Device = run_only()
    compile: CompileMode = run_only()
    model: TransformerModel


class TransformerParams(Sections):
    seed: Seed
    train_transformer: TrainTransformer


class Decoding(Part):
    """How the served translator decodes: its longest sentence and its beam."""

    num_steps: int = field_of(TrainTransformer, "num_steps")
    beam_size: int = field_of(TrainTransformer, "beam_size")


class TranslatorParams(Sections):
    """What the served translator reads of params.yaml beside a model file (`primer translate`)."""

    train_transformer: Decoding


def check_transformer_params(params: TransformerParams) -> None:
    """The checks across keys, before any work."""
    p = params.train_transformer
    check_fit_params(p, "train_transformer")
    check_launch(p, p.batch_size, "train_transformer")
    m = p.model
    if m.num_hiddens % m.num_heads:
        raise PrimerError(f"'train_transformer.model.num_hiddens' ({m.num_hiddens}) must be divisible by "
                          f"'train_transformer.model.num_heads' ({m.num_heads}); change one of them.")
    pick_device(p.device, "train_transformer.device")


def data_sizes(data) -> dict:
    """The pairs per split, the lines skipped by reason and the vocabulary sizes, as metrics."""
    sizes = {f"pairs/{name}": len(pairs) for name, pairs in data.splits.items()}
    skipped = {f"skipped/{reason}": n for reason, n in sorted(data.skipped.items())}
    return {**sizes, **skipped, "vocab/src": len(data.src_vocab), "vocab/tgt": len(data.tgt_vocab)}


def describe_data(data) -> str:
    """The same, in words: "{'pairs/train': 30, ...}, skipped lines {'no_tab': 1}, vocab 20 en / 22 fr"."""
    sizes = {f"pairs/{name}": len(pairs) for name, pairs in data.splits.items()}
    return (f"{sizes}, skipped lines {dict(data.skipped) or 'none'}, "
            f"vocab {len(data.src_vocab)} en / {len(data.tgt_vocab)} fr")
