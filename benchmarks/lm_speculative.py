"""Prompt-lookup speculative decoding (``speculative="ngram"``) against plain decoding on a code edit.

    python benchmarks/lm_speculative.py                 # the bundled pycode LM and a GPT-2-small-shaped random model
    python benchmarks/lm_speculative.py --quick         # pycode and a 2-layer GPT-2, to check the script
    python benchmarks/lm_speculative.py --workdir /tmp/spec-bench   # keep the converted models between runs

The prompt is a code edit: a piece of a Python file, then a line saying an edited copy follows and the copy's first
lines; a model that edits code continues by repeating the file, which prompt lookup drafts.  Each model generates
the same number of new tokens at batch 1, greedy and with seeded sampling (pycode's own defaults: temperature 0.7,
top-k 40, repetition penalty 1.1), plain and speculative runs interleaved ``--repeats`` times after a warm-up;
decode tokens/s counts the tokens after the first (as benchmarks/lm.py), medians printed with the spread (min..max)
because shared machines are noisy, with the drafted and accepted token counts and whether the two outputs were
identical token for token.  Random weights do not copy their context: the GPT-2-shaped model shows what
speculation costs when drafts mostly fail (and what it gains when greedy decoding falls into a loop).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm import build  # noqa: E402  (benchmarks/ is not a package)

MODELS = Path(__file__).resolve().parents[1] / "models"
#: The edited file: a function of the standard library (the same text on every machine with this Python).
SOURCE = inspect.getsource(textwrap.TextWrapper._wrap_chunks)
GREEDY = dict(temperature=0)
SAMPLED = dict(temperature=0.7, top_k=40, repetition_penalty=1.1, seed=0)


def edit_prompt(lm, file_tokens: int) -> list[int]:
    """The code-edit prompt's token ids: whole lines of SOURCE up to ``file_tokens`` tokens, then the copy's start."""
    lines, kept = SOURCE.splitlines(keepends=True), ""
    for line in lines:
        if len(lm.encode(kept + line)) > file_tokens:
            break
        kept += line
    return lm.encode(kept + "\n\n# The same code, edited:\n" + "".join(lines[:2]))


def one_run(lm, ids: list[int], settings) -> tuple[list[int], float, int, int]:
    """(tokens, decode seconds after the first token, drafted, accepted) of one batch-1 run."""
    gen = lm.generator(settings)
    gen.append_tokens([ids])
    gen.generate_next_token()
    started = time.perf_counter()
    while not gen.is_done():
        gen.generate_next_token()
    return gen.tokens(0), time.perf_counter() - started, getattr(gen, "drafted", 0), getattr(gen, "accepted", 0)


def compare(name: str, lm, ids: list[int], new: int, repeats: int) -> None:
    from edgegen import GenerationSettings

    for label, sampling in (("greedy", GREEDY), ("sampled", SAMPLED)):
        settings = {mode: GenerationSettings(max_new_tokens=new, ignore_eos=True, speculative=mode, **sampling)
                    for mode in ("off", "ngram")}
        rates: dict[str, list[float]] = {mode: [] for mode in settings}
        tokens: dict[str, list[int]] = {}
        counts = (0, 0)
        for mode, s in settings.items():   # warm-up
            one_run(lm, ids, s)
        for _ in range(repeats):
            for mode, s in settings.items():
                toks, seconds, drafted, accepted = one_run(lm, ids, s)
                tokens[mode] = toks
                rates[mode].append((len(toks) - 1) / seconds)
                if mode == "ngram":
                    counts = (drafted, accepted)
        med = {mode: statistics.median(r) for mode, r in rates.items()}
        spread = {mode: f"{min(r):.0f}..{max(r):.0f}" for mode, r in rates.items()}
        print(f"{name:<12} {label:<8} plain {med['off']:7.0f} tok/s ({spread['off']:>11})   "
              f"ngram {med['ngram']:7.0f} tok/s ({spread['ngram']:>11})   x{med['ngram'] / med['off']:.2f}   "
              f"drafted {counts[0]:4d} accepted {counts[1]:4d}/{len(tokens['ngram'])}   "
              f"identical: {tokens['off'] == tokens['ngram']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A 2-layer GPT-2 instead of GPT-2 small's shape.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own).")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep models here (default: a temp dir).")
    args = parser.parse_args()
    import edgegen

    root = args.workdir or Path(tempfile.mkdtemp(prefix="lm-speculative-"))
    root.mkdir(parents=True, exist_ok=True)
    pycode = root / "pycode"
    if not (pycode / "edgegen.json").is_file():
        print(f"converting models/pycode into {pycode}")
        edgegen.convert(f"{MODELS / 'pycode.py'}:spec", pycode, quantize="none")
    size = "tiny" if args.quick else "small"
    gpt2 = root / f"gpt2-{size}"
    if not (gpt2 / "edgegen.json").is_file():
        print(f"building a random GPT-2 ({size}) in {root}")
        hf_root = root / f"gpt2-{size}-src"
        hf_root.mkdir(exist_ok=True)
        edgegen.convert(build(hf_root, size), gpt2, quantize="none")
    print(f"batch 1, {args.repeats} interleaved repeats after a warm-up, threads {args.threads or 'default'}; "
          "medians (min..max)")
    runs = (("pycode", pycode, 110, 128), (f"gpt2-{size}", gpt2, 90 if args.quick else 400, 128 if args.quick else 256))
    for name, path, file_tokens, new in runs:   # prompt + new tokens within each context (256, 256 / 1024)
        lm = edgegen.load(path, provider="cpu", threads=args.threads)
        ids = edit_prompt(lm, file_tokens)
        compare(name, lm, ids, new, args.repeats)


if __name__ == "__main__":
    main()
