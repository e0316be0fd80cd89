"""Tiny models saved as the training stages save them, for evaluate and the server: a translator over
PAIRS' vocabularies, and TEXT, a tiny language model's corpus."""

from __future__ import annotations

import torch

from primer.models.transformer import Seq2SeqTransformer
from primer.text.sentence_pairs import build_vocab, preprocess_nmt

TEXT = "the time traveller for so it will be convenient to speak of him was expounding a recondite matter to us " * 8
PAIRS = "".join(f"I see {i}.\tJe vois {i}.\nGo {i}!\tVa {i} !\n" for i in range(30))


def save_tiny_translator(path) -> tuple:
    """A tiny Transformer over PAIRS' vocabularies, saved as train_transformer saves it; (model, src, tgt)."""
    lines = [preprocess_nmt(line).split("\t") for line in PAIRS.strip().split("\n")]
    src, tgt = build_vocab([s.split() for s, _ in lines], 1), build_vocab([t.split() for _, t in lines], 1)
    args = {"src_vocab_size": len(src), "tgt_vocab_size": len(tgt), "num_hiddens": 16, "num_heads": 2,
            "ffn_num_hiddens": 16, "num_layers": 1, "dropout": 0.0, "label_smoothing": 0.0, "pad_id": 1, "bos_id": 2,
            "eos_id": 3}
    model = Seq2SeqTransformer(**args).eval()
    torch.save({"model": model.state_dict(), "model_args": args, "src_vocab": src.idx_to_token,
                "tgt_vocab": tgt.idx_to_token, "history": []}, path)
    return model, src, tgt
