"""Decode speed of edgegen against PyTorch eager, Optimum's ORTModelForCausalLM and a bare
``session.run`` loop, on the same random-weight model, in one run.

    python benchmarks/lm.py                    # GPT-2 small (124M), prompt 32, 128 new tokens, greedy
    python benchmarks/lm.py --size tiny        # a 2-layer model, to check the script quickly

Every contender generates the same 128 greedy tokens after the same 32-token prompt at
batch 1; decode tokens/s counts the tokens after the first (prefill is reported apart).
Runs are interleaved and repeated (median reported) because shared machines are noisy;
compare the ratios printed at the end, not absolute figures across machines.  Peak RSS
of edgegen generation (VmHWM, Linux) is measured in a fresh subprocess that must not import torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {
    "small": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, n_positions=256, vocab_size=1000),
}


def save_tokenizer(dest: Path, text: str, special_tokens: list[str], **named: str) -> None:
    """A byte-level BPE tokenizer (600 tokens) trained on ``text``, saved as a transformers tokenizer in ``dest``;
    ``named``: transformers' names of special tokens (eos_token="...")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([text] * 4, trainers.BpeTrainer(
        vocab_size=600, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, **named).save_pretrained(dest)


def build(root: Path, size: str) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**SIZES[size], bos_token_id=0, eos_token_id=0)).eval()
    model.save_pretrained(root / "hf")
    save_tokenizer(root / "hf", Path(__file__).read_text(), ["<|endoftext|>"], eos_token="<|endoftext|>")
    return root / "hf"


def torch_eager(hf: Path, prompt: np.ndarray, new: int, device: str = "cpu"):
    """Hugging Face's model in PyTorch eager with its KV cache (fp16 on CUDA), each token taken to the host."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=dtype).to(device).eval()
    ids = torch.from_numpy(prompt).to(device)

    def run() -> tuple[list[int], float, float]:
        with torch.no_grad():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens, past = [int(token)], out.past_key_values          # int(): to the host (waits for a GPU)
            t1 = time.perf_counter()
            for _ in range(new - 1):
                out = model(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(int(token))
            return tokens, t1 - t0, time.perf_counter() - t1
    return run


def optimum_ort(onnx_dir: Path, prompt: np.ndarray, new: int):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(onnx_dir, use_cache=True, use_io_binding=False)
    ids = torch.from_numpy(prompt)

    def run() -> tuple[list[int], float, float]:
        kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        t1 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kwargs)
        t2 = time.perf_counter()
        return out[0, prompt.shape[1]:].tolist(), t1 - t0, (t2 - t1) - (t1 - t0)
    return run


def bare_loop(graph: Path, prompt: np.ndarray, new: int, threads: int | None = None, *, head_dim: int | None = None,
              profile: str | None = None):
    """The plainest loop: session.run with numpy inputs, presents fed back as pasts (by name), feeding only the
    inputs the graph has (``logits_to_keep`` 1 where it takes one).  ``head_dim`` where the graph's past inputs
    leave it symbolic (ONNX Runtime GenAI's); ``profile``: a file prefix for ORT's profiler (``run.session``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if profile:
        opts.enable_profiling, opts.profile_file_prefix = True, profile
    sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    pasts = [i for i in sess.get_inputs() if i.name.startswith("past_key_values")]
    outputs = ["logits", *(p.name.replace("past_key_values", "present") for p in pasts)]

    def run() -> tuple[list[int], float, float]:
        feeds = {p.name: np.zeros((1, p.shape[1], 0, head_dim or p.shape[3]), np.float32)  # [B, H_kv, 0, D]
                 for p in pasts}
        ids, length, tokens = prompt, prompt.shape[1], []
        t0 = t1 = time.perf_counter()
        for step in range(new):
            feeds.update(input_ids=ids, attention_mask=np.ones((1, length), np.int64), logits_to_keep=np.array([1]),
                         position_ids=np.arange(length - ids.shape[1], length, dtype=np.int64)[None])
            out = sess.run(outputs, {k: v for k, v in feeds.items() if k in names})
            tokens.append(int(out[0][0, -1].argmax()))
            feeds.update({p.name: v for p, v in zip(pasts, out[1:], strict=True)})
            ids, length = np.array([[tokens[-1]]], np.int64), length + 1
            if step == 0:
                t1 = time.perf_counter()
        return tokens, t1 - t0, time.perf_counter() - t1
    run.session = sess  # type: ignore[attr-defined]
    return run


def edgegen_runtime(artifact: Path, prompt: np.ndarray, new: int, provider: str = "cpu"):
    import edgegen
    from edgegen import GenerationSettings

    lm = edgegen.load(artifact, provider=provider)
    settings = GenerationSettings(temperature=0, max_new_tokens=new, ignore_eos=True)

    def run() -> tuple[list[int], float, float]:
        gen = lm.generator(settings)
        t0 = time.perf_counter()
        gen.append_tokens([prompt[0].tolist()])
        gen.generate_next_token()
        t1 = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        return gen.tokens(0), t1 - t0, time.perf_counter() - t1
    return run


_RSS_PROBE = """
import sys, json
import edgegen
from edgegen import GenerationSettings
lm = edgegen.load(sys.argv[1], provider="cpu")
gen = lm.generator(GenerationSettings(temperature=0, max_new_tokens=int(sys.argv[3]), ignore_eos=True))
gen.append_tokens([json.loads(sys.argv[2])])
while not gen.is_done():
    gen.generate_next_token()
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))  # peak since exec
print(json.dumps({"peak_rss_mb": int(hwm.split()[1]) / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def time_contenders(contenders: dict, repeats: int, prompt_tokens: int) -> tuple[dict, dict, dict]:
    """Warm each contender up, then run them interleaved ``repeats`` times: (decode tok/s runs,
    prefill tok/s runs, last tokens), each by contender name.  A contender returns (tokens,
    prefill seconds, decode seconds); decode tok/s counts the tokens after the first."""
    decode: dict[str, list[float]] = {name: [] for name in contenders}
    prefill: dict[str, list[float]] = {name: [] for name in contenders}
    tokens: dict[str, list[int]] = {}
    for run in contenders.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in contenders.items():
            toks, t_prefill, t_decode = run()
            tokens[name] = toks
            decode[name].append((len(toks) - 1) / t_decode)
            prefill[name].append(prompt_tokens / t_prefill)
    return decode, prefill, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quantized", nargs="*", default=[], choices=["fp16", "int8", "int4"],
                        help="Also time edgegen artifacts quantized with these schemes.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep models here (default: a temp dir).")
    args = parser.parse_args()
    import edgegen

    root = args.workdir or Path(tempfile.mkdtemp(prefix="edgegen-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    hf = root / "hf" if (root / "hf" / "config.json").exists() else build(root, args.size)
    artifact = root / "artifact"
    if not (artifact / "edgegen.json").exists():
        t = time.perf_counter()
        edgegen.convert(hf, artifact, quantize="none", report=lambda line: print("  convert:", line))
        print(f"converted in {time.perf_counter() - t:.1f} s")
    if not (root / "optimum" / "model.onnx").exists():
        from optimum.exporters.onnx import main_export

        main_export(str(hf), output=root / "optimum", task="text-generation-with-past", do_validation=False)
    quantized = {}
    for scheme in args.quantized:
        q_artifact = root / f"artifact-{scheme}"
        if not (q_artifact / "edgegen.json").exists():
            edgegen.convert(hf, q_artifact, quantize=scheme, report=lambda line: print("  convert:", line))
        quantized[f"edgegen {scheme}"] = q_artifact
    manifest = json.loads((artifact / "edgegen.json").read_text())
    graph = artifact / manifest["graphs"]["decoder"]["file"]
    prompt = np.random.default_rng(0).integers(1, SIZES[args.size]["vocab_size"], (1, args.prompt_tokens))

    contenders = {
        "PyTorch eager": torch_eager(hf, prompt, args.new_tokens),
        "Optimum ORTModelForCausalLM": optimum_ort(root / "optimum", prompt, args.new_tokens),
        "bare session.run loop (our graph)": bare_loop(graph, prompt, args.new_tokens),
        "edgegen": edgegen_runtime(artifact, prompt, args.new_tokens),
        **{name: edgegen_runtime(path, prompt, args.new_tokens) for name, path in quantized.items()},
    }
    decode, prefill, tokens = time_contenders(contenders, args.repeats, args.prompt_tokens)
    size_mb = sum(p.stat().st_size for p in artifact.iterdir()) / 2**20
    probe = json.loads(subprocess.run([sys.executable, "-c", _RSS_PROBE, str(artifact), json.dumps(prompt[0].tolist()),
                                       str(args.new_tokens)], capture_output=True, text=True, check=True).stdout)

    med = {name: statistics.median(v) for name, v in decode.items()}
    print(f"\nGPT-2 {args.size} (random weights), prompt {args.prompt_tokens}, {args.new_tokens} new tokens, greedy, "
          f"batch 1, median of {args.repeats}; graph: {manifest['validation'].get('graph')}")
    print(f"{'':36} {'decode tok/s':>12} {'prefill tok/s':>14}  same tokens as edgegen")
    for name in contenders:
        print(f"{name:36} {med[name]:12.1f} {statistics.median(prefill[name]):14.0f}  "
              f"{tokens[name] == tokens['edgegen']}")
    print(f"\nedgegen / Optimum ORTModelForCausalLM : {med['edgegen'] / med['Optimum ORTModelForCausalLM']:.2f}x")
    print(f"edgegen / bare session.run loop       : {med['edgegen'] / med['bare session.run loop (our graph)']:.2f}x")
    print(f"edgegen / PyTorch eager               : {med['edgegen'] / med['PyTorch eager']:.2f}x")
    for name in quantized:
        print(f"{name} / edgegen fp32{'':<{max(0, 19 - len(name))}}: {med[name] / med['edgegen']:.2f}x")
    print(f"peak RSS of edgegen generation: {probe['peak_rss_mb']:.0f} MB (artifact on disk {size_mb:.0f} MB, "
          f"budget {size_mb + 150:.0f} MB); torch imported: {probe['torch_imported']}")


if __name__ == "__main__":
    main()
