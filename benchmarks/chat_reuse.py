"""Multi-turn chat with and without KV reuse: time to first token per turn, and the tokens of both.

A GPT-2 small shaped model (12 layers, 768 wide, 50257 logits, 2048 positions so ten turns fit; random
weights) with a ChatML template and a byte-level tokenizer trained on this file, converted once (fp32, or
``--quantize``).  A 10-turn conversation of
~50-token user messages and 48-token greedy replies is run three ways, interleaved over ``--repeats`` rounds:

- ``session``: a ChatSession, each turn running only its new tokens on the cache it kept;
- ``cold``: ``lm.chat`` on the whole conversation so far, the prefix cache cleared first (every turn re-runs
  everything, as before KV reuse);
- ``prefix``: ``lm.chat`` with the prefix cache kept (independent requests sharing the conversation's prefix).

It prints the median time to first token per turn for each, the turn-10 ratio cold / session, and whether
the three gave identical tokens on every turn.  Run: ``python benchmarks/chat_reuse.py [--repeats 5]``.

Measured (2026-12-02, ``--repeats 5``, fp32, ORT 1.32 CPU, a shared 2-core VM with three other test runs
going: session figures spread 380-1,660 ms per turn): turn 10 time to first token, session 489 ms, cold
3,178 ms (6.5x), prefix cache 869 ms (3.7x); tokens identical across the three on every turn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
USER = ("Please look at this function and tell me what it returns for small inputs, then suggest a faster "
        "version that keeps the same results: def f(n): return n if n < 2 else f(n - 1) + f(n - 2)  # turn {}")


def build(root: Path, quantize: str) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    import edgegen

    hf = root / "hf"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_positions=2048, bos_token_id=0, eos_token_id=0)).eval().save_pretrained(hf)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([Path(__file__).read_text()] * 4, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            chat_template=CHATML).save_pretrained(hf)
    return edgegen.convert(hf, root / "artifact", quantize=quantize, report=lambda *_: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the model here (default: a temp dir).")
    args = parser.parse_args()

    import edgegen
    from edgegen import GenerationSettings

    root = args.workdir or Path(tempfile.mkdtemp(prefix="edgegen-chat-"))
    artifact = root / "artifact" if (root / "artifact" / "edgegen.json").is_file() else build(root, args.quantize)
    lm = edgegen.load(artifact, provider="cpu", threads=args.threads)
    settings = GenerationSettings(temperature=0, max_new_tokens=args.reply_tokens)
    users = [USER.format(i + 1) for i in range(args.turns)]

    def session_run() -> tuple[list[float], list[tuple[int, ...]]]:
        lm.prefix_cache.clear()
        session = lm.chat_session(system="You are a helpful coding assistant.", settings=settings)
        ttft, tokens = [], []
        for text in users:
            reply = session.send(text)
            ttft.append(reply.completion.time_to_first_token_s)
            tokens.append(reply.completion.token_ids)
        return ttft, tokens

    def request_run(keep_prefix: bool) -> tuple[list[float], list[tuple[int, ...]]]:
        lm.prefix_cache.clear()
        messages = [{"role": "system", "content": "You are a helpful coding assistant."}]
        ttft, tokens = [], []
        for text in users:
            messages.append({"role": "user", "content": text})
            if not keep_prefix:
                lm.prefix_cache.clear()
            reply = lm.chat(messages, settings)
            messages.append(reply.message)
            ttft.append(reply.completion.time_to_first_token_s)
            tokens.append(reply.completion.token_ids)
        return ttft, tokens

    ways = {"session": session_run, "cold": lambda: request_run(False), "prefix": lambda: request_run(True)}
    times: dict[str, list[list[float]]] = {name: [] for name in ways}
    outputs: dict[str, list[tuple[int, ...]]] = {}
    started = time.perf_counter()
    for _ in range(args.repeats):           # interleaved: machine load hits every way alike
        for name, way in ways.items():
            ttft, tokens = way()
            times[name].append(ttft)
            outputs.setdefault(name, tokens)
            if tokens != outputs[name]:
                print(f"warning: {name} gave other tokens on a repeat", file=sys.stderr)
    print(f"edgegen chat KV reuse: GPT-2 small shape, {args.turns} turns, {args.reply_tokens}-token greedy replies, "
          f"{args.repeats} interleaved repeats ({time.perf_counter() - started:.0f} s), {lm.provider}, "
          f"quantize={args.quantize}")
    print(f"{'turn':>4} {'prompt tok':>10} " + " ".join(f"{n + ' ttft ms':>16}" for n in ways) + "   spread (session)")
    prompt_tokens = [len(lm.encode(u)) for u in users]
    for t in range(args.turns):
        medians = {n: 1000 * statistics.median(run[t] for run in times[n]) for n in ways}
        spread = [1000 * run[t] for run in times["session"]]
        print(f"{t + 1:>4} {prompt_tokens[t]:>10} " + " ".join(f"{medians[n]:>16.1f}" for n in ways)
              + f"   {min(spread):.1f}-{max(spread):.1f}")
    last = {n: statistics.median(run[-1] for run in times[n]) for n in ways}
    print(f"turn {args.turns}: cold / session = {last['cold'] / last['session']:.1f}x, "
          f"cold / prefix cache = {last['cold'] / last['prefix']:.1f}x")
    same = outputs["session"] == outputs["cold"] == outputs["prefix"]
    print(f"tokens identical across session, cold and prefix on every turn: {same}")


if __name__ == "__main__":
    main()
