"""Shared by the text families (causal-lm, rnn-lm): generation settings, token samplers, incremental
detokenization and stop strings, and the step loop that turns tokens into text.
"""
