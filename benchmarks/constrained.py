"""What constrained decoding (structured output, runtimes/text/constrained.py) costs per token.

    python benchmarks/constrained.py --workdir /tmp/bench-constrained        # GPT-2 small, 128 new tokens
    python benchmarks/constrained.py --quick                                  # a 2-layer model, to check it

GPT-2 small's architecture (transformers' GPT2Config() defaults: 12 layers, 768 wide, vocabulary 50257)
with random weights, and a byte-level BPE of 50257 tokens trained on the Python standard library's sources
(llguidance's mask cost grows with the vocabulary and its token trie, so the tokenizer must be full size;
GPT-2's own is not downloaded).  Converted with ``edgegen.convert(..., quantize=--quantize)`` (auto: what a
user gets on this CPU) and cached in ``--workdir``.

The same 32-token prompt is decoded greedily, unconstrained (ignore_eos) and under a JSON schema (an array
of at least 64 person objects: strings, integers, enums, arrays; it cannot end within 128 tokens, so both
runs give every token), interleaved ``--repeats`` times; medians.  Printed: decode ms/token both ways,
their difference as % of the unconstrained step, and the time inside ``Constraint.mask`` + ``advance``
(llguidance's mask and the numpy masking; measured directly, less noisy than the difference) as % of the
unconstrained step: the issue's budget is 10%.  Also the one-off costs: llguidance's tokenizer (cold, once
per model) and compiling the schema (each run).

Measured (one run, ``--workdir /tmp/bench-constrained --repeats 5``, quantize auto = int8, shared 2-core
x86 VM under other people's tests, ORT 1.32 CPU, llguidance 1.9.1): unconstrained 50.5 ms/token, json_schema
48.3 ms/token (the difference, -4%, is the machine's noise); inside mask + advance 1.06 ms/token = 2.1% of
the step (~0.25 ms llguidance's mask, ~0.1 ms numpy, the rest cache misses after the weights stream
through: the same loop on the 2-layer --quick model spends 0.33 ms).  One-off: llguidance's tokenizer
0.85 s per model (cached), the schema 1.1 ms per run.
"""

from __future__ import annotations

import argparse
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {
    "small": dict(vocab_size=50257),                 # GPT2Config() defaults otherwise
    "quick": dict(n_layer=2, n_head=4, n_embd=64, n_positions=256, vocab_size=50257),
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
SCHEMA = {"type": "array", "items": PERSON, "minItems": 64}


def train_tokenizer(dest: Path, vocab_size: int) -> None:
    """A byte-level BPE of ``vocab_size`` tokens (<|endoftext|> = 0) on the stdlib's .py files, saved for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files, size = [], 0
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):   # the first ~24 MB: enough merges
        if "site-packages" not in f.parts and size < 24e6:
            files.append(f)
            size += f.stat().st_size
    texts = (f.read_text(encoding="utf-8", errors="replace") for f in files)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    print(f"tokenizer: {tok.get_vocab_size()} tokens from {len(files)} stdlib files ({size / 1e6:.0f} MB)")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>").save_pretrained(dest)


def build(root: Path, size: str) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = root / f"hf-{size}"
    if (hf / "config.json").exists():
        return hf
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**SIZES[size], bos_token_id=0, eos_token_id=0)).eval()
    model.save_pretrained(hf)
    print(f"GPT-2 {size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    train_tokenizer(hf, SIZES[size]["vocab_size"])
    return hf


class Timed:
    """A Constraint whose mask and advance add their seconds to ``spent``."""

    def __init__(self, constraint, spent: list[float]) -> None:
        self.constraint, self.spent = constraint, spent

    def mask(self, logits, live):
        t = time.perf_counter()
        out = self.constraint.mask(logits, live)
        self.spent[0] += time.perf_counter() - t
        return out

    def advance(self, tokens, live):
        t = time.perf_counter()
        out = self.constraint.advance(tokens, live)
        self.spent[0] += time.perf_counter() - t
        return out


def runner(lm, prompt: list[int], new: int, response_format):
    from edgegen import GenerationSettings

    settings = GenerationSettings(temperature=0, max_new_tokens=new, ignore_eos=True, response_format=response_format)

    def run() -> tuple[list[int], float, float]:
        """(tokens, decode seconds for the tokens after the first, seconds inside the constraint then)."""
        spent = [0.0]
        gen = lm.generator(settings)
        if gen.constraint is not None:
            gen.constraint = Timed(gen.constraint, spent)
        gen.append_tokens([prompt])
        gen.generate_next_token()
        spent[0] = 0.0
        t = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        return gen.tokens(0), time.perf_counter() - t, spent[0]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A 2-layer model (same vocabulary), to check the script.")
    parser.add_argument("--quantize", default="auto", help="edgegen.convert's quantize (auto, none, int8, int4...).")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep models here (default: a temp dir).")
    args = parser.parse_args()
    import edgegen
    from edgegen.runtimes.text.constrained import compile_constraint

    size = "quick" if args.quick else "small"
    root = args.workdir or Path(tempfile.mkdtemp(prefix="edgegen-constrained-"))
    root.mkdir(parents=True, exist_ok=True)
    hf = build(root, size)
    artifact = root / f"edgegen-{size}-{args.quantize}"
    if not (artifact / "edgegen.json").exists():
        t = time.perf_counter()
        edgegen.convert(hf, artifact, quantize=args.quantize, report=lambda line: print("  convert:", line))
        print(f"converted in {time.perf_counter() - t:.1f} s")
    lm = edgegen.load(artifact, provider="cpu")
    prompt = lm.encode("def parse(records):\n    \"\"\"Return the people in records as JSON objects.\"\"\"\n" * 4)
    prompt = prompt[:args.prompt_tokens]
    fmt = {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}

    t = time.perf_counter()
    compile_constraint(fmt, lm.tokenizer, lm.sampler.eos_token_ids, lm.graph.vocab_size, 1)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(5):
        compile_constraint(fmt, lm.tokenizer, lm.sampler.eos_token_ids, lm.graph.vocab_size, 1)
    warm = (time.perf_counter() - t) / 5

    contenders = {"unconstrained": runner(lm, prompt, args.new_tokens, None),
                  "json_schema": runner(lm, prompt, args.new_tokens, fmt)}
    step: dict[str, list[float]] = {name: [] for name in contenders}
    inside: list[float] = []
    texts = {}
    for run in contenders.values():
        run()   # warm-up
    for _ in range(args.repeats):
        for name, run in contenders.items():
            tokens, seconds, spent = run()
            step[name].append(seconds / (len(tokens) - 1))
            texts[name] = lm.decode(tokens)
            if name == "json_schema":
                inside.append(spent / (len(tokens) - 1))
    base, constrained = statistics.median(step["unconstrained"]), statistics.median(step["json_schema"])
    cost = statistics.median(inside)
    print(f"\nGPT-2 {size} architecture (random weights, vocabulary {lm.graph.vocab_size}), quantize={args.quantize}, "
          f"prompt {len(prompt)}, {args.new_tokens} new tokens, greedy, batch 1, median of {args.repeats}, CPU")
    print(f"  unconstrained decode      {base * 1e3:8.2f} ms/token  {1 / base:7.1f} tok/s")
    print(f"  json_schema decode        {constrained * 1e3:8.2f} ms/token  {1 / constrained:7.1f} tok/s")
    print(f"  difference                {(constrained - base) * 1e3:8.2f} ms/token  "
          f"{100 * (constrained - base) / base:6.1f} % of the unconstrained step")
    print(f"  inside mask + advance     {cost * 1e3:8.2f} ms/token  {100 * cost / base:6.1f} % of the unconstrained "
          f"step (budget 10 %)")
    print(f"  llguidance tokenizer + first compile (once per model): {cold * 1e3:.0f} ms; "
          f"compiling the schema per run: {warm * 1e3:.1f} ms")
    print(f"  constrained text starts: {texts['json_schema'][:100]!r}")


if __name__ == "__main__":
    main()
