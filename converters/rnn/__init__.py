"""Recurrent LMs (LSTM/GRU, RNNLMSpec) to a step graph with its state in and out."""
