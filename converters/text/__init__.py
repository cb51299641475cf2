"""Shared by the text families (causal-lm, rnn-lm): spec checks of a module and its tokenizer, the
tokenizer's special tokens, and the fixed validation prompts and figures.
"""
