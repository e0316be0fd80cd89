"""Trained models read back and measured: the model files under models/ and the translator's BLEU,
examples and attention."""
