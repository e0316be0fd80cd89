"""Run under torchrun: train a tiny language model and a tiny Transformer with DDP through the stages'
own batches, the shared loop and primer.distributed, then save this rank's weights to OUT/rank{R}.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from primer import distributed
from primer.models.rnn import RNNLM
from primer.models.transformer import Seq2SeqTransformer
from primer.text.corpus import Vocab
from primer.text.length_batches import bucketed_batches
from primer.text.sentence_pairs import BOS, EOS, PAD, build_vocab, preprocess_nmt, to_array
from primer.training.lm_training import epoch_batches
from primer.training.loop import FitConfig, fit, make_optimizer

TEXT = "the time traveller (for so it will be convenient to speak of him) was expounding a matter to us " * 6
PAIRS = ["Go.\tVa !", "Hi.\tSalut !", "Run!\tCours !", "Wow!\tÇa alors !", "Fire!\tAu feu !", "Help!\tÀ l'aide !",
         "Stop!\tArrête-toi !", "Wait!\tAttends !", "I see.\tJe comprends.", "I try.\tJ'essaye."]


def language_model(device: torch.device) -> torch.nn.Module:
    vocab = Vocab(TEXT)
    torch.manual_seed(0)
    model = RNNLM(len(vocab), "lstm", 16, 1, "fused", dropout=0.0).to(device)
    net = distributed.wrap(model, device)
    ids = torch.tensor(vocab.encode(TEXT))
    fit(net, make_optimizer(net, "sgd", 1.0), epoch_batches(model, ids, "sequential", 4, 8, 0, device), lambda m, e: {},
        FitConfig(3, grad_clip=1.0, best_metric="train/epoch_loss", unit="tok"))
    return model


def translator(device: torch.device) -> torch.nn.Module:
    pairs = [tuple(side.split() for side in preprocess_nmt(line).split("\t")) for line in PAIRS]
    src_vocab, tgt_vocab = build_vocab([s for s, _ in pairs], 1), build_vocab([t for _, t in pairs], 1)
    src, tgt = to_array([s for s, _ in pairs], src_vocab, 8), to_array([t for _, t in pairs], tgt_vocab, 8)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(len(src_vocab), len(tgt_vocab), 16, 2, 32, 1, 0.1, pad_id=tgt_vocab[PAD],
                               bos_id=tgt_vocab[BOS], eos_id=tgt_vocab[EOS]).to(device)
    net = distributed.wrap(model, device)
    fit(net, make_optimizer(net, "adam", 0.01), bucketed_batches(src, tgt, 4, 0, device, model.pad_id),
        lambda m, e: {}, FitConfig(3, grad_clip=1.0, best_metric="train/epoch_loss", unit="tok"))
    return model


if __name__ == "__main__":
    device = distributed.setup(torch.device("cpu"))
    weights = {"lm": language_model(device).state_dict(), "translator": translator(device).state_dict()}
    torch.save(weights, Path(sys.argv[1]) / f"rank{distributed.rank()}.pt")
    distributed.teardown()
