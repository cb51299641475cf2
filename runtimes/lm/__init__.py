"""The causal-LM runtime: the decoder graph with its KV cache, and the generator over it."""
