"""The encoder-decoder (seq2seq) runtime: T5, BART, mBART, Marian artifacts."""
