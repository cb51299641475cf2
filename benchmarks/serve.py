"""``edgegen serve`` under load: aggregate decode tokens/s at 1, 4 and 16 concurrent clients, and p50/p99 time to
first token.

A GPT-2 small shaped model (12 layers, 768 wide, 50257 logits, 1024 positions; random weights) with a
byte-level tokenizer trained on this file, converted once (``--quantize``, default int8), served by a real
``edgegen serve`` process on a free loopback port.  Each client sends ``--requests`` streamed completions one
after another (distinct prompts of ``--prompt-tokens`` (40) tokens, greedy, ``--tokens`` new tokens each); a request's time to first
token is taken at its first chunk (``logprobs: 0`` makes one per token), the decode figure is every client's
completion tokens over the wall time of the round.
``--cohorts`` runs the same with merging off (each cohort of requests its own graph run per step: the
scheduler before continuous batching) for comparison.  Every client count runs ``--repeats`` times, interleaved (1, 4, 16, 1, 4, 16, ...); the table gives medians and
the range.
Run: ``python benchmarks/serve.py [--quantize int8] [--tokens 64] [--requests 4] [--repeats 3] [--workdir DIR]``.

Measured: see the report of the change that added it (the figures depend on the machine's free cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
WORDS = Path(__file__).read_text().split()


def build(root: Path, quantize: str) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    import edgegen

    hf = root / "hf"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_positions=1024, bos_token_id=0, eos_token_id=0)).eval().save_pretrained(hf)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([Path(__file__).read_text()] * 4, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>").save_pretrained(hf)
    return edgegen.convert(hf, root / "artifact", quantize=quantize, report=lambda *_: None)


#: the server's launcher; ``--cohorts`` patches merging off (each cohort its own graph run per step, as before it)
_MAIN = "import sys\nfrom edgegen.cli import main\nsys.argv[0]='edgegen'\nmain()"
_NO_MERGE = ("from edgegen.runtimes.lm.batch_engine import MergedBatch\n"
             "MergedBatch.supports = staticmethod(lambda lm: False)\n")


def start_server(artifact: Path, max_batch: int, threads: int | None,
                 merge: bool = True) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-c", _MAIN if merge else _NO_MERGE + _MAIN, "serve",
            f"bench={artifact}", "--port", "0", "--provider", "cpu", "--max-batch", str(max_batch)]
    if threads:
        args += ["--threads", str(threads)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        m = _LISTENING.search(line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()   # keep draining
            return proc, f"http://127.0.0.1:{m.group(1)}"
    raise SystemExit("edgegen serve did not start")


#: the prompts the clients send, set by main (PROMPT_TOKENS tokens each)
PROMPTS: list[str] = []


def make_prompts(artifact: Path, count: int, length: int) -> list[str]:
    """``count`` distinct texts of this file that encode to ``length`` tokens each with the artifact's tokenizer
    (equal lengths: the merged batch's left padding costs nothing; a 600-token BPE trained on this file makes
    30 words anything from 60 to 300 tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(next(artifact.rglob("tokenizer.json"))))
    ids = tok.encode(" ".join(WORDS)).ids
    out = []
    for i in range(count):
        start = (i * 97) % (len(ids) - length)
        text = tok.decode(ids[start:start + length])
        while len(tok.encode(text).ids) > length:      # a retokenization may be longer by a token or two
            text = text[:-1]
        out.append(text)
    return out


def prompt(i: int) -> str:
    return PROMPTS[i % len(PROMPTS)]


def one_request(client, url: str, i: int, tokens: int) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streamed completion."""
    # logprobs=0: a chunk for every token, even one whose text is held back (the random model's byte-level
    # tokens often end inside a character), so the first chunk is the first token
    body = {"model": "bench", "prompt": prompt(i), "max_tokens": tokens, "temperature": 0, "stream": True,
            "logprobs": 0, "stream_options": {"include_usage": True}}
    started, first, used = time.perf_counter(), None, 0
    with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"]:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - started), used


def round_of(url: str, clients: int, requests: int, tokens: int) -> dict[str, float]:
    import httpx

    ttfts: list[float] = []
    total = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client_loop(c: int) -> None:
        with httpx.Client() as client:
            barrier.wait()
            for k in range(requests):
                ttft, used = one_request(client, url, c * requests + k, tokens)
                with lock:
                    ttfts.append(ttft)
                    total[0] += used

    workers = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    ttfts.sort()
    return {"clients": clients, "requests": len(ttfts), "tokens": total[0], "wall_s": wall,
            "tok_per_s": total[0] / wall, "ttft_p50_ms": 1000 * statistics.median(ttfts),
            "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="Requests per client, one after another.")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--prompt-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads of the server.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the model here (default: a temp dir).")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of every client count, interleaved.")
    parser.add_argument("--cohorts", action="store_true",
                        help="Turn merging off: every cohort of requests runs its own graph per step (the comparison).")
    parser.add_argument("--json", type=Path, default=None, help="Write every round's figures here.")
    args = parser.parse_args()

    root = args.workdir or Path(tempfile.mkdtemp(prefix="edgegen-serve-bench-"))
    artifact = root / "artifact" if (root / "artifact" / "edgegen.json").is_file() else build(root, args.quantize)
    levels = [int(c) for c in args.clients.split(",")]
    PROMPTS[:] = make_prompts(artifact, max(levels) * args.requests, args.prompt_tokens)
    proc, url = start_server(artifact, max(levels), args.threads, merge=not args.cohorts)
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in levels}
    try:
        round_of(url, 1, 1, 8)                        # warm-up: first-run allocations
        for _ in range(args.repeats):                 # interleaved: a slow spell of the machine hits every level
            for c in levels:
                runs[c].append(round_of(url, c, args.requests, args.tokens))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    print(f"edgegen serve{' (merging off: --cohorts)' if args.cohorts else ''}: GPT-2 small shape, quantize="
          f"{args.quantize}, {args.prompt_tokens}-token prompts, {args.tokens} greedy tokens per request, "
          f"{args.requests} streamed requests per client, CPU, {os.cpu_count()} cores; median of {args.repeats} "
          "interleaved runs [min-max]")
    print(f"{'clients':>7} {'tokens':>7} {'wall s':>7} {'decode tok/s':>22} {'ttft p50 ms':>22} {'ttft p99 ms':>22}")

    def cell(c: int, key: str) -> str:
        values = [r[key] for r in runs[c]]
        return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"

    for c in levels:
        print(f"{c:>7} {runs[c][0]['tokens']:>7} {statistics.median(r['wall_s'] for r in runs[c]):>7.2f} "
              f"{cell(c, 'tok_per_s'):>22} {cell(c, 'ttft_p50_ms'):>22} {cell(c, 'ttft_p99_ms'):>22}")
    base = statistics.median(r["tok_per_s"] for r in runs[levels[0]])
    print(f"speed-up over {levels[0]} client(s) (medians): " + ", ".join(
        f"{c}: {statistics.median(r['tok_per_s'] for r in runs[c]) / base:.2f}x" for c in levels))
    if args.json:
        args.json.write_text(json.dumps({str(c): runs[c] for c in levels}, indent=1))


if __name__ == "__main__":
    main()
