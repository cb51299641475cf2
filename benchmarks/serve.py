"""``edgegen serve`` under load: aggregate decode tokens/s at 1, 4 and 16 concurrent clients, and p50/p99 time to
first token.

A GPT-2 small shaped model (12 layers, 768 wide, 50257 logits, 1024 positions; random weights) with a
byte-level tokenizer trained on this file, converted once (``--quantize``, default int8), served by a real
``edgegen serve`` process on a free loopback port.  Each client sends ``--requests`` streamed completions one
after another (distinct ~40-token prompts, greedy, ``--tokens`` new tokens each); a request's time to first
token is taken at its first chunk (``logprobs: 0`` makes one per token), the decode figure is every client's
completion tokens over the wall time of the round.
Run: ``python benchmarks/serve.py [--quantize int8] [--tokens 64] [--requests 4] [--workdir DIR]``.

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


def start_server(artifact: Path, max_batch: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-c", "import sys\nfrom edgegen.cli import main\nsys.argv[0]='edgegen'\nmain()", "serve",
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


def prompt(i: int) -> str:
    start = (i * 37) % (len(WORDS) - 40)
    return " ".join(WORDS[start:start + 30])


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
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads of the server.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the model here (default: a temp dir).")
    args = parser.parse_args()

    root = args.workdir or Path(tempfile.mkdtemp(prefix="edgegen-serve-bench-"))
    artifact = root / "artifact" if (root / "artifact" / "edgegen.json").is_file() else build(root, args.quantize)
    levels = [int(c) for c in args.clients.split(",")]
    proc, url = start_server(artifact, max(levels), args.threads)
    try:
        round_of(url, 1, 1, 8)                        # warm-up: first-run allocations
        rows = [round_of(url, c, args.requests, args.tokens) for c in levels]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    print(f"edgegen serve: GPT-2 small shape, quantize={args.quantize}, {args.tokens} greedy tokens per request, "
          f"{args.requests} streamed requests per client, CPU, {os.cpu_count()} cores")
    print(f"{'clients':>7} {'requests':>8} {'tokens':>7} {'wall s':>7} {'decode tok/s':>12} {'ttft p50 ms':>11} "
          f"{'ttft p99 ms':>11}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['tokens']:>7} {r['wall_s']:>7.2f} {r['tok_per_s']:>12.1f} "
              f"{r['ttft_p50_ms']:>11.1f} {r['ttft_p99_ms']:>11.1f}")
    base = rows[0]["tok_per_s"]
    print("speed-up over 1 client: " + ", ".join(f"{r['clients']}: {r['tok_per_s'] / base:.2f}x" for r in rows))


if __name__ == "__main__":
    main()
