"""LM int4 side by side with ONNX Runtime GenAI on the same Llama-architecture model, in one run.

    pip install onnxruntime-genai==0.18.0      # or: pip install -e .[bench] -c constraints.txt
    python benchmarks/lm_genai.py              # ~100M Llama (GQA 12/4 heads), prompt 32, 128 new tokens, greedy
    python benchmarks/lm_genai.py --quick      # a 2-layer model, to check the script quickly

GenAI's int4 model is made by its model builder (block 32, accuracy_level 4, the defaults
for CPU, spelled out) and timed with its generated config and with ``intra_op_num_threads``
set to the core count ("tuned"); edgegen converts the same Hugging Face directory with
``edgegen.convert(..., quantize=...)``.  Every contender generates the same number of greedy
tokens after the same prompt ids at batch 1; decode tokens/s counts the tokens after the
first.  Runs are interleaved, median and best of --repeats; the machine may be shared (then
trust "best" and the ratios, not absolute figures across machines).  edgegen's int4 keeps the
LM head in 8 bits (``quantize_decoder(..., lm_head="int8")``, what ``edgegen.convert`` does).

Findings (profiling the gap)
----------------------------
Measured on a shared 2-core x86 VM (ORT 1.32 CPU, GenAI 0.18, 2 threads), quiet spell; noisy.

- Where a decode step goes (ORT profiler, bare session.run loop, ms/step, min of 2; the
  profiler inflates graphs with many nodes):
      edgegen int4, float head   9.4 = MatMulNBits 2.0 + MatMul 3.6 (fp32 LM head ~3.3) + other ops 3.7
      edgegen int4, int8 head    6.4 = MatMulNBits 2.9 + other ops 3.5
      GenAI int4                 3.3 = MatMulNBits 2.6 + GroupQueryAttention 0.3 + other ops 0.3
- 1. The fp32 LM head (32000 x 768, 98 MB read per token, twice the int4 body) was the largest
  single cost.  quantize_decoder(..., "int4", lm_head="int8") puts it in 8-bit block-wise
  MatMulNBits: decode 136 -> 224 tok/s median through edgegen's runtime, 0.32x -> 0.52x GenAI
  tuned (+65%, partly because the int4 artifact here kept the unfused graph; +40% with the same
  fused graph on both sides, bare loops), top-1 agreement with fp32 unchanged (0.417 -> 0.406
  over 96 positions, one flip: the int4 body dominates; logits RMS error 0.1777 both).  GenAI
  quantizes the head to int4 (another ~0.3 ms/step; int4 head RMS error +3%).  edgegen.convert
  now uses the int8 head for int4.
- 2. Everything but the MatMuls: 914 nodes (Constants aside) in our fused graph, 1340 in the
  unfused one, vs 97 in GenAI's.  Optimum's Llama export computes attention as Transpose /
  Concat(past, new) / Expand+Reshape (repeat_kv) / MatMul / Where (a 4-D causal mask built
  every step from attention_mask) / Softmax / MatMul, with ~600 shape-arithmetic nodes (Shape,
  Gather, Unsqueeze, Concat, Reshape, Cast) around them; ORT's transformer optimizer fuses
  only RMSNorm (SkipSimplifiedLayerNormalization) and RotaryEmbedding there (it has no GQA
  fusion for Optimum's Llama export).  GenAI's builder emits per layer one GroupQueryAttention
  (rotary, head sharing, causal masking and the KV append inside; the mask reduced to
  seqlens_k / total_sequence_length) fed by a packed QKV MatMulNBits.  Profiled: 3.5 vs 0.6
  ms/step; wall clock, bare loops: 4.2 (int8 head) vs 2.8 ms/step, ~0.3 of it the bigger head,
  the rest this.  Fix: a converter pass (converters/lm/convert.py, after the optimizer) rewriting each
  layer's attention block into com.microsoft.GroupQueryAttention (and packing q/k/v weights into
  one MatMul before int4), or exporting Llama-family models with a GQA-emitting builder.
  Estimated: decode step 4.2 -> ~3.0 ms (~+40%), near GenAI's bare-loop speed.  Care: GQA
  takes padding only as seqlens_k, so left-padded batches need right padding or per-row runs.
- 3. GenAI's own loop over the same graph beats a bare loop by +20% (430 vs 359 tok/s):
  past_present_share_buffer (a fixed [B, H_kv, max_len, D] cache that GroupQueryAttention
  writes in place: no per-step Concat copy, no new OrtValues).  Needs 2. first; then
  runtimes/lm/decoder.py binds one preallocated cache buffer as both past and present.
  Estimated: a further ~+20%, to about parity with GenAI tuned -- beyond it: an int4 head
  (~+5%), edgegen's per-step Python cost (below), speculative decoding.
- Done (``--attention gqa``, converters/lm/gqa_decoder.py, rows "(gqa)" here): 2. and 3. above.  The
  int4 gqa graph has GenAI's op census exactly (41 MatMulNBits, 8 GroupQueryAttention, 16
  SkipSimplifiedLayerNormalization, ~100 nodes); the runtime binds a shared past/present buffer.
  One run, 5 repeats, median tok/s: edgegen int4 149 -> int4 (gqa) 230 (1.54x), GenAI tuned 321
  (0.47x -> 0.72x), bare loops 164 / 220 / GenAI 261.  Bare loops alone, interleaved, median of 5
  (noisy): GenAI graph 244 (grow) / 284 (shared buffer); edgegen gqa int8 head 233 / 236; the
  same gqa graph with an int4 head (MatMulNBitsQuantizer on all 41 MatMuls) 251 / 278: what is
  left between the graphs is the 8-bit LM head (~+15% if int4; a fidelity trade, not taken here).
- Threads matter for GenAI too: its generated config (no intra_op_num_threads) ran at 269
  tok/s, 430 with intra_op_num_threads=2.  edgegen already uses every core by default.
- edgegen's Python loop costs ~0.25 ms/step over a bare session.run (236 vs 224 tok/s here):
  not the gap today, ~10% once the graph is at GenAI's 2.3 ms/step (IO binding rebuilt and
  ~35 bind calls per step; reusing one binding would trim it).
- Then (one run, quiet spell, median of 7, ``--schemes --gqa-schemes int4 --genai-block-128 --repeats 7``):
  the runtime reuses one IO binding per run (cache bound once, one-token logits into a preallocated
  buffer): ~+8%; int4 blocks of 128 instead of 32 (bare loops 422 vs 346 tok/s; pycode held-out
  perplexity +1.41% vs +1.20%); the 8-bit head in blocks of 128 (as fast as a 4-bit head of 32).
  edgegen int4 (gqa) 327.9 tok/s = 0.99x GenAI tuned (332.7); with ``lm_head="int4"`` 396.5 = 1.19x.
  GenAI built with blocks of 128 too: 478.7, so at equal settings GenAI's C++ loop leads by 1.2-1.45x.
  Where: edgegen's Python per step costs ~40-50 us run alone (session.run stubbed out) but ~300 us
  between real runs (caches evicted by the weights streaming through; 1 intra-op thread: the same),
  ~12% of a 2.5 ms step.  Then logits written by ORT straight into a fresh numpy array (no copy) and
  the shared buffer's size kept in the binding: ~25 us alone, ~160 us between runs; next run (9
  repeats): edgegen int4 (gqa) 489.5 = 1.08x GenAI tuned (454.2), int4 head 559.6 = 1.23x, GenAI at
  blocks of 128 592.7.  Next: fewer Python objects touched per step, or the loop in ONNX Runtime
  (its GreedySearch/Sampling contrib ops run a decoder subgraph in C++).
- Packing gate and up projections into one MatMulNBits (as QKV is) was tried: no gain (265 vs 270
  tok/s, bare loops), not kept.
- The converter's exported-vs-optimized choice is timed and flips under load (the int4
  artifact here kept the exported graph, [exp]); the two differ by only ~4% for this Llama.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm import bare_loop, edgegen_runtime, save_tokenizer, time_contenders  # noqa: E402  (benchmarks/ is not a package)

SIZES = {  # ~100M parameters: 8 x 6.3M decoder layers + 2 x 24.6M embedding / LM head (untied)
    "full": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "quick": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1000, max_position_embeddings=512),
}
INSTALL = "pip install onnxruntime-genai==0.18.0  (the 'bench' extra: pip install -e .[bench] -c constraints.txt)"
# The 0.18 builder imports two transformers classes that 4.57 lacks (used for Qwen3.5 only): stub them.
_BUILDER = """
import runpy, sys, transformers
for name in ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"):
    if not hasattr(transformers, name):
        setattr(transformers, name, type(name, (), {}))
sys.argv = ["builder", *sys.argv[1:]]
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
"""


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_hf(root: Path, size: str) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SIZES[size], bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, rope_theta=10000.0,
                         rope_scaling={"rope_type": "default"})  # the GenAI builder reads rope_scaling
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(root / "hf")
    print(f"Llama {size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    save_tokenizer(root / "hf", Path(__file__).read_text(), ["<unk>", "<s>", "</s>"], unk_token="<unk>",
                   bos_token="<s>", eos_token="</s>")
    return root / "hf"


def build_genai(hf: Path, out: Path, threads: int | None, block: int = 32) -> Path:
    """GenAI's model builder: int4 CPU, block 32, accuracy_level 4; threads written into genai_config.json."""
    if not (out / "genai_config.json").exists():
        cmd = [sys.executable, "-c", _BUILDER, "-i", str(hf), "-o", str(out), "-p", "int4", "-e", "cpu",
               "-c", str(out.parent / "genai-cache"), "--extra_options", f"block_size={block}", "accuracy_level=4"]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"GenAI model builder failed:\n{done.stderr[-3000:]}")
        print(f"GenAI builder: {time.perf_counter() - t:.1f} s")
    config = json.loads((out / "genai_config.json").read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options.pop("intra_op_num_threads", None)
    if threads:
        options["intra_op_num_threads"] = threads
    tuned = out.parent / f"{out.name}-threads{threads or 'default'}"
    if not tuned.exists():  # a config dir per thread setting; the graph files are linked, not copied
        tuned.mkdir()
        for f in out.iterdir():
            if f.name != "genai_config.json":
                (tuned / f.name).symlink_to(f.resolve())
    (tuned / "genai_config.json").write_text(json.dumps(config, indent=2))
    return tuned


def genai_runtime(model_dir: Path, prompt: np.ndarray, new: int):
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    total = prompt.shape[1] + new

    def run() -> tuple[list[int], float, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=total, min_length=total)  # greedy, no early EOS
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt.astype(np.int32))  # prefill: runs the model on the prompt
        gen.generate_next_token()                   # picks the first token
        t1 = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()               # runs one decode step, picks the next token
        t2 = time.perf_counter()
        return [int(t) for t in gen.get_sequence(0)[prompt.shape[1]:]], t1 - t0, t2 - t1
    return run


def op_census(graph: Path) -> collections.Counter:
    import onnx

    model = onnx.load_model(str(graph), load_external_data=False)
    return collections.Counter(f"{n.domain + ':' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}"
                               for n in model.graph.node)


def profile_ops(graph: Path, prompt: np.ndarray, new: int, threads: int, head_dim: int,
                workdir: Path) -> dict[str, float]:
    """Per-op-type ms per decode step (ORT profiler; the prefill step is left out)."""
    run = bare_loop(graph, prompt, new, threads, head_dim=head_dim,
                    profile=str(workdir / f"profile-{graph.parent.name}"))
    run()
    trace = json.loads(Path(run.session.end_profiling()).read_text())
    steps = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    first_end = steps[0]["ts"] + steps[0]["dur"]
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > first_end:
            per_op[e["args"]["op_name"]] += e["dur"] / 1000 / (len(steps) - 1)
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def graph_of(artifact: Path) -> Path:
    manifest = json.loads((artifact / "edgegen.json").read_text())
    return artifact / manifest["graphs"]["decoder"]["file"]


def graph_label(artifact: Path) -> str:
    """Which candidate the converter kept: "optimized" (fused by ORT's transformer optimizer) or "exported"."""
    return json.loads((artifact / "edgegen.json").read_text())["validation"]["graph"][:3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A 2-layer model, to check the script.")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--schemes", nargs="*", default=["none", "int8", "int4"], choices=["none", "int8", "int4"],
                        help="edgegen artifacts to time (none = fp32).")
    parser.add_argument("--gqa-schemes", nargs="*", default=["none", "int4"], choices=["none", "int8", "int4"],
                        help="edgegen artifacts converted with attention='gqa' (GroupQueryAttention) to time.")
    parser.add_argument("--gqa-int4-heads", nargs="*", default=["auto", "int4"],
                        choices=["auto", "float", "int8", "int4"],
                        help="LM heads of the gqa int4 artifacts (auto: edgegen's default, 8 bits; int4: GenAI's).")
    parser.add_argument("--genai-block-128", action="store_true",
                        help="Also time GenAI's int4 built with blocks of 128 (edgegen's int4 block size).")
    parser.add_argument("--profile", action="store_true", help="Also print per-op ms/step of both int4 graphs.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep models here (default: a temp dir).")
    args = parser.parse_args()
    if importlib.util.find_spec("onnxruntime_genai") is None:
        sys.exit(f"onnxruntime-genai is not installed; {INSTALL}")
    import edgegen

    size = "quick" if args.quick else "full"
    root = args.workdir or Path(tempfile.mkdtemp(prefix="edgegen-genai-"))
    root.mkdir(parents=True, exist_ok=True)
    hf = root / "hf" if (root / "hf" / "config.json").exists() else build_hf(root, size)
    n = cores()
    genai_default = build_genai(hf, root / "genai-int4", None)
    genai_tuned = build_genai(hf, root / "genai-int4", n)
    artifacts = {}
    for scheme in args.schemes:
        artifact = root / f"edgegen-{scheme}"
        if not (artifact / "edgegen.json").exists():
            t = time.perf_counter()
            edgegen.convert(hf, artifact, quantize=scheme, attention="standard",
                            report=lambda line: print("  convert:", line))
            print(f"edgegen {scheme}: converted in {time.perf_counter() - t:.1f} s")
        artifacts["fp32" if scheme == "none" else scheme] = artifact
    for scheme, head in ((s, h) for s in args.gqa_schemes for h in (args.gqa_int4_heads if s == "int4" else ["auto"])):
        suffix = "" if head == "auto" else f", {head} head"
        artifact = root / f"edgegen-{scheme}-gqa{'' if head == 'auto' else '-head-' + head}"
        if not (artifact / "edgegen.json").exists():
            t = time.perf_counter()
            edgegen.convert(hf, artifact, quantize=scheme, attention="gqa", lm_head=head,
                            report=lambda line: print("  convert (gqa):", line))
            print(f"edgegen {scheme} (gqa{suffix}): converted in {time.perf_counter() - t:.1f} s")
        artifacts[f"{'fp32' if scheme == 'none' else scheme} (gqa{suffix})"] = artifact
    prompt = np.random.default_rng(0).integers(3, SIZES[size]["vocab_size"], (1, args.prompt_tokens))
    genai_graph = genai_tuned / "model.onnx"
    config = json.loads((hf / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]

    contenders = {
        "GenAI int4 (generated config)": genai_runtime(genai_default, prompt, args.new_tokens),
        "GenAI int4 (tuned threads)": genai_runtime(genai_tuned, prompt, args.new_tokens),
        "bare loop, GenAI int4 graph": bare_loop(genai_graph, prompt, args.new_tokens, n, head_dim=head_dim),
        **({"GenAI int4 block 128 (tuned threads)": genai_runtime(build_genai(hf, root / "genai-int4-b128", n, 128),
                                                                  prompt, args.new_tokens)}
           if args.genai_block_128 else {}),
        **{f"edgegen {s}": edgegen_runtime(a, prompt, args.new_tokens) for s, a in artifacts.items()},
        **{f"bare loop, edgegen {s} graph": bare_loop(graph_of(a), prompt, args.new_tokens, n, head_dim=head_dim)
           for s, a in artifacts.items() if s.startswith("int4")},
    }
    decode, prefill, tokens = time_contenders(contenders, args.repeats, args.prompt_tokens)

    med = {name: statistics.median(v) for name, v in decode.items()}
    best = {name: max(v) for name, v in decode.items()}
    ref = "GenAI int4 (tuned threads)"
    print(f"\nLlama {size} (random weights, {config['num_hidden_layers']} layers, GQA "
          f"{config['num_attention_heads']}/{config['num_key_value_heads']} heads), prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, greedy, batch 1, {n} threads; decode tok/s median and best of "
          f"{args.repeats} interleaved runs; [graph the converter kept]")
    fp32 = tokens.get("edgegen fp32")
    print(f"{'':46} {'median':>7} {'best':>7} {'prefill':>8}  same tokens as GenAI int4"
          f"{' | edgegen fp32' if fp32 else ''}")
    for name in contenders:
        scheme = name.removeprefix("edgegen ")
        label = f"{name} [{graph_label(artifacts[scheme])}]" if scheme in artifacts else name
        print(f"{label:46} {med[name]:7.1f} {best[name]:7.1f} {statistics.median(prefill[name]):8.0f}  "
              f"{sum(a == b for a, b in zip(tokens[name], tokens[ref])):3}/{len(tokens[ref])}"
              + (f"  | {sum(a == b for a, b in zip(tokens[name], fp32)):3}/{len(fp32)}" if fp32 else ""))
    print()
    for name in (k for k in med if k.startswith("edgegen int4")):
        for other in (ref, "GenAI int4 (generated config)"):
            print(f"{name} / {other}: {med[name] / med[other]:.2f}x median, {best[name] / best[other]:.2f}x best")
    if "int4" in artifacts or "int4 (gqa)" in artifacts:
        graphs = {f"edgegen {s}": graph_of(artifacts[s]) for s in ("int4", "int4 (gqa)") if s in artifacts}
        graphs["GenAI int4"] = genai_graph
        census = {k: op_census(g) for k, g in graphs.items()}
        print("\nop census (nodes)                   " + " ".join(f"{k:>18}" for k in census))
        for op in sorted(set().union(*census.values()), key=lambda o: -sum(c[o] for c in census.values())):
            print(f"  {op:34} " + " ".join(f"{c[op]:18}" for c in census.values()))
        for label, graph in graphs.items() if args.profile else ():
            ops = profile_ops(graph, prompt, min(args.new_tokens, 32), n, head_dim, root)
            print(f"\n{label}: ms per decode step by op type (ORT profiler, bare loop), total {sum(ops.values()):.2f}")
            for op, ms in list(ops.items())[:10]:
                print(f"  {op:36} {ms:7.3f}")

if __name__ == "__main__":
    main()
