"""The recurrent-LM runtime: a step graph with its state in and out."""
