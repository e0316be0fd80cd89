"""What training a character-level language model takes: the `train_lm` params section (shared settings
and named variants), its checks against the corpus, its epochs' batches and its checkpoint fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from primer import distributed
from primer.devices import Device, pick_device
from primer.distributed import Launch, check_launch
from primer.errors import PrimerError
from primer.models.rnn import RNNLM
from primer.params import Name, Section, Sections, Seed, output_only, result_values, run_only
from primer.text.corpus import (
    epoch_positions,
    gather_batches,
    seq_data_iter_random,
    seq_data_iter_sequential,
    split_tail,
)
from primer.training.checkpoint import fingerprint
from primer.training.fit_params import CompileMode, FitParams, Patience, check_fit_params


class LmModel(Section):
    """`RNNLM`'s arguments (the vocabulary size comes from the corpus)."""

    cell: Literal["rnn", "lstm", "gru"]
    num_hiddens: int = Field(ge=1, le=8192)
    num_layers: int = Field(ge=1, le=16)
    impl: Literal["scratch", "fused"]
    dropout: float = Field(ge=0, le=0.9)


class LmVariant(Section):
    model: LmModel
    lr: float = Field(ge=1e-6, le=100)
    patience: Patience  # per variant: the plain RNN still improves slowly where gated cells overfit


class TrainLm(FitParams, Launch):
    val_fraction: float = Field(ge=0.01, le=0.5)
    batch_size: int = Field(ge=1, le=4096)
    num_steps: int = Field(ge=1, le=10_000)
    sampling: Literal["random", "sequential"]
    sample_chars: int = output_only(ge=1, le=10_000)  # the sample in its metrics
    prefix: str = output_only()
    sample_every: int = run_only(ge=1)
    device: Device = run_only()
    compile: CompileMode = run_only()
    variants: dict[Name, LmVariant] = Field(min_length=1)


class LmParams(Sections):
    seed: Seed
    train_lm: TrainLm


def check_lm_params(variant: str, corpus_file: Path, corpus_chars: int, params: LmParams) -> None:
    """The variant exists, the device too, and the corpus is long enough for these params."""
    p = params.train_lm
    check_fit_params(p, "train_lm")
    check_launch(p, p.batch_size, "train_lm")
    if variant not in p.variants:
        raise PrimerError(f"no variant '{variant}' under 'train_lm.variants' (have: {', '.join(p.variants)}); "
                          "add it or pick one of those.")
    pick_device(p.device, "train_lm.device")
    if p.sample_every % p.val_every:  # samples are written when the model is evaluated
        raise PrimerError(f"'train_lm.sample_every' ({p.sample_every}) must be a multiple of 'train_lm.val_every' "
                          f"({p.val_every}), since samples are written at validation; change one of them.")
    if p.compile == "reduce-overhead" and p.sampling == "sequential":
        raise PrimerError("'train_lm.compile' is 'reduce-overhead', whose CUDA graphs reuse their output buffers, but "
                          "'train_lm.sampling' is 'sequential', which carries the state across steps; use 'default' or "
                          "sampling 'random'.")
    train_ids, val_ids = split_tail(torch.zeros(corpus_chars, dtype=torch.long), p.val_fraction)
    sampler(p.sampling)(train_ids, p.batch_size, p.num_steps, torch.Generator())  # too short a corpus fails here
    if len(val_ids) < 2:
        raise PrimerError(f"{corpus_file} leaves only {len(val_ids)} character(s) for validation; "
                          "raise 'train_lm.val_fraction'.")


def sampler(sampling: str):
    """d2l's minibatch iterator that `train_lm.sampling` names."""
    return seq_data_iter_sequential if sampling == "sequential" else seq_data_iter_random


def epoch_batches(model: RNNLM, ids: torch.Tensor, sampling: str, batch_size: int, num_steps: int, seed: int,
                  device: torch.device):
    """epoch -> (X, Y) minibatches on the device (`train_lm`'s sampling, batch_size and num_steps); sequential
    sampling carries the state across them.

    The corpus lives on the device; each epoch draws its positions on the host (d2l's samplers, seeded by
    seed and epoch) and sends them over once, so every step gathers its batch on the device. Under DDP
    every rank draws the same positions and keeps its own rows of each batch (`shard_rows`): the global
    batch stays batch_size, and sequential sampling still continues each row from the batch before."""
    sequential, on_device = sampling == "sequential", ids.to(device)

    def batches(epoch: int):
        model.reset_state()
        model.carry_state = sequential
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        positions = shard_rows(epoch_positions(len(ids), batch_size, num_steps, sequential, generator))
        return gather_batches(on_device, positions.to(device))

    return batches


def shard_rows(positions: torch.Tensor) -> torch.Tensor:
    """This rank's rows of every batch of (batches, batch_size, num_steps) positions: batch_size // world
    consecutive rows, the same rows in every batch (the remainder of batch_size is left out)."""
    per_rank = positions.shape[1] // distributed.world()
    start = distributed.rank() * per_rank
    return positions[:, start : start + per_rank]


def shared_results(p: TrainLm) -> dict:
    """The train_lm result fields that every variant shares: another variant's change leaves this one's
    checkpoint valid."""
    return {k: v for k, v in result_values(p.model_dump(), TrainLm).items() if k != "variants"}


def lm_fingerprint(params: LmParams, variant: str, model_args: dict, vocab: list[str], chars: int) -> str:
    """What a resumed run must share with the checkpoint: the model, this variant's and the shared result
    fields, the seed and the corpus."""
    p = params.train_lm
    return fingerprint(model=model_args, variant=result_values(p.variants[variant].model_dump(), LmVariant),
                       train=shared_results(p), seed=params.seed, vocab=vocab, chars=chars,
                       world=distributed.world())
