"""Causal LMs: Hugging Face transformers directories and custom modules (CausalLMSpec) to a decoder
graph with its KV cache; int8/int4/fp16 under a perplexity gate.
"""
