"""train_transformer's twenty sentence pairs, and a small seeded Seq2SeqTransformer with its sizes."""

from __future__ import annotations

import torch

from primer.models.transformer import Seq2SeqTransformer

PAIRS = """Go.\tVa !
Hi.\tSalut !
Run!\tCours !
Wow!\tÇa alors !
Fire!\tAu feu !
Help!\tÀ l'aide !
Stop!\tArrête-toi !
Wait!\tAttends !
I see.\tJe comprends.
I try.\tJ'essaye.
I won!\tJ'ai gagné !
Oh no!\tOh non !
Attack!\tAttaque !
Cheers!\tSanté !
Get up.\tLève-toi.
Got it!\tJ'ai pigé !
He ran.\tIl a couru.
Hop in.\tMonte.
Hug me.\tSerre-moi dans tes bras !
I fell.\tJe suis tombé.
"""


D, HEADS, FFN = 16, 4, 24
PAD, BOS, EOS = 1, 2, 3


def small_model(dropout=0.0, **kw):
    torch.manual_seed(0)
    return Seq2SeqTransformer(11, 13, D, HEADS, FFN, 2, dropout, pad_id=PAD, bos_id=BOS, eos_id=EOS, **kw).eval()
