"""The text path: the character corpus and its vocabulary, English-French sentence pairs, BLEU and
attention plots."""
