"""The prompts the batch tests generate from (a module of its own: test files cannot import a conftest reliably)."""

PROMPTS = ["def add(a, b):", "import os", "class Reader:", "The quick brown fox", "x = 1", "Once upon a time",
           "for i in range(10):", "héllo wörld"]
