"""Encoder-decoder (seq2seq) conversion: T5, BART, mBART, Marian directories via Optimum's exporter."""
