"""Peak memory and time of converting real-size causal LMs (issue 29).

    python benchmarks/convert_memory.py                       # TinyLlama 1.1B fp32, default flags and -q int4
    python benchmarks/convert_memory.py --size 3b --dtype bfloat16 --quantize int4
    python benchmarks/convert_memory.py --layers 6            # TinyLlama's width, 6 layers (a quick look)
    python benchmarks/convert_memory.py --tree /tmp/old-edgegen   # the same, with another checkout's code

Builds a random-weight Llama checkpoint of the size's shape as safetensors shards (1 GB each) tensor by
tensor, never instantiating the model (so building it needs one shard of memory), with a small BPE
tokenizer, in ``--work`` (kept between runs: the checkpoint is built once).  Each conversion runs
``edgegen.convert`` in a child process, which records its peak RSS (VmHWM) per stage: the peak since
the previous report line is charged to the stage that line reports, and VmHWM is reset after each line
(/proc/self/clear_refs).  The parent prints wall time, the overall peak, the artifact's size and the
per-stage peaks, and kills the child if its RSS passes ``--kill-above-gb`` (other work shares the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
SIZES = {   # Llama shapes: TinyLlama-1.1B, Llama-3.2-3B, Llama-3-8B
    "1.1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, max_position_embeddings=2048, tie_word_embeddings=True,
               head_dim=128),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, max_position_embeddings=2048, tie_word_embeddings=False),
}
SHARD_BYTES = 1 << 30


def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, inter, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = [("model.embed_tokens.weight", (v, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes += [(f"{p}.input_layernorm.weight", (h,)), (f"{p}.post_attention_layernorm.weight", (h,)),
                   (f"{p}.self_attn.q_proj.weight", (q, h)), (f"{p}.self_attn.k_proj.weight", (kv, h)),
                   (f"{p}.self_attn.v_proj.weight", (kv, h)), (f"{p}.self_attn.o_proj.weight", (h, q)),
                   (f"{p}.mlp.gate_proj.weight", (inter, h)), (f"{p}.mlp.up_proj.weight", (inter, h)),
                   (f"{p}.mlp.down_proj.weight", (h, inter))]
    shapes.append(("model.norm.weight", (h,)))
    if not config.get("tie_word_embeddings"):
        shapes.append(("lm_head.weight", (v, h)))
    return shapes


def build_checkpoint(dest: Path, size: str, dtype: str, layers: int | None) -> Path:
    """A random-weight Hugging Face Llama directory, written shard by shard (normal(0, 0.02) weights, norms 1,
    the LM head x8 so greedy decoding has clear winners, as the tests' tiny models)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from lm import save_tokenizer

    if (dest / "config.json").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    config = {**SIZES[size], **({"num_hidden_layers": layers} if layers else {})}
    LlamaConfig(**config, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                rope_scaling={"rope_type": "default"}, torch_dtype=dtype).save_pretrained(dest)
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)
    shapes = tensor_shapes(config)
    total = sum(math.prod(s) for _, s in shapes) * torch_dtype.itemsize
    shard: dict[str, torch.Tensor] = {}
    index: dict[str, str] = {}
    n_shards = max(1, math.ceil(total / SHARD_BYTES))

    def flush() -> None:
        name = f"model-{len(set(index.values())) + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(shard, str(dest / name), metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, name))
        shard.clear()

    held = 0
    for name, shape in shapes:
        if len(shape) == 1:
            t = torch.ones(shape, dtype=torch_dtype)
        else:
            t = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=generator)
            if name in ("lm_head.weight",) or (name == "model.embed_tokens.weight" and config["tie_word_embeddings"]):
                t.mul_(8.0)
            t = t.to(torch_dtype)
        if held and held + t.numel() * t.element_size() > SHARD_BYTES:
            flush()
            held = 0
        shard[name] = t
        held += t.numel() * t.element_size()
    flush()
    names = sorted(set(index.values()))
    if len(names) != n_shards:   # the file names say "of N": rename to the real count
        fixed = {old: f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i, old in enumerate(names)}
        for old, new in fixed.items():
            (dest / old).rename(dest / new)
        index = {k: fixed[v] for k, v in index.items()}
    (dest / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": index}, indent=1))
    save_tokenizer(dest, Path(__file__).read_text(), ["<unk>", "<s>", "</s>"], unk_token="<unk>",
                   bos_token="<s>", eos_token="</s>")
    print(f"built {dest}: {sum(math.prod(s) for _, s in shapes) / 1e9:.2f}B parameters, {total / 1e9:.2f} GB {dtype}")
    return dest


# -- the child: one conversion, peak RSS per stage -----------------------------------------------

def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(args: argparse.Namespace) -> None:
    if args.tree:   # run another checkout's code: point the editable install's finder at it
        import __editable___edgegen_0_1_0_finder as finder  # type: ignore[import-not-found]

        tree = Path(args.tree)
        finder.MAPPING.update({"edgegen": str(tree / "edgegen"), "edgegen.converters": str(tree / "converters"),
                               "edgegen.runtimes": str(tree / "runtimes")})
    import edgegen

    stages: list[dict] = []
    started = last = time.perf_counter()

    def report(line: str) -> None:
        nonlocal last
        now = time.perf_counter()
        stages.append({"stage": line.split(":")[0][:40], "peak_rss_bytes": _vm_hwm(), "s": round(now - last, 1)})
        print(f"  [{now - started:6.1f} s, peak {_vm_hwm() / 1e9:5.2f} GB] {line}", flush=True)
        _reset_hwm()
        last = now

    _reset_hwm()
    error = None
    try:
        edgegen.convert(args.child, args.out, overwrite=True, quantize=args.quantize, report=report)
    except Exception as exc:  # noqa: BLE001  (recorded and printed: the benchmark goes on)
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    stages.append({"stage": "(end)", "peak_rss_bytes": _vm_hwm(), "s": round(time.perf_counter() - last, 1)})
    Path(args.result).write_text(json.dumps({"stages": stages, "error": error,
                                             "wall_s": time.perf_counter() - started}))


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def convert(hf: Path, out: Path, quantize: str, tree: str | None, kill_above: float) -> dict:
    result = out.with_suffix(".json")
    cmd = [sys.executable, __file__, "--child", str(hf), "--out", str(out), "--quantize", quantize,
           "--result", str(result), *(["--tree", tree] if tree else [])]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    killed = False
    while proc.poll() is None:
        if _rss(proc.pid) > kill_above * 1e9:
            proc.kill()
            killed = True
        time.sleep(0.2)
    wall = time.perf_counter() - started
    figures = json.loads(result.read_text()) if result.is_file() and not killed else {"stages": [], "error": None}
    if killed:
        figures["error"] = f"killed: RSS over {kill_above} GB"
    size = sum(p.stat().st_size for p in out.iterdir()) if out.is_dir() and not figures["error"] else None
    peak = max((s["peak_rss_bytes"] for s in figures["stages"]), default=None)
    return {"quantize": quantize, "wall_s": round(wall, 1), "peak_rss_bytes": peak, "artifact_bytes": size,
            "error": figures["error"], "stages": figures["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="1.1b")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the size's (a quick look)")
    parser.add_argument("--quantize", action="append", default=None,
                        help="schemes to convert with, repeatable [default: none and int4]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgegen-convert-memory"))
    parser.add_argument("--tree", default=None, help="run this checkout's edgegen code instead of the installed one")
    parser.add_argument("--kill-above-gb", type=float, default=12.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.quantize = args.quantize[0]
        return child(args)
    label = f"{args.size}-{args.dtype}" + (f"-{args.layers}l" if args.layers else "")
    hf = build_checkpoint(args.work / label / "hf", args.size, args.dtype, args.layers)
    source_bytes = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    results = []
    for scheme in args.quantize or ["none", "int4"]:
        print(f"converting {label} ({source_bytes / 1e9:.2f} GB of safetensors), --quantize {scheme}", flush=True)
        r = convert(hf, args.work / label / f"artifact-{scheme}", scheme, args.tree, args.kill_above_gb)
        results.append(r)
        peak = f"{r['peak_rss_bytes'] / 1e9:.2f} GB ({r['peak_rss_bytes'] / source_bytes:.2f}x the checkpoint)" \
            if r["peak_rss_bytes"] else "?"
        size = f"{r['artifact_bytes'] / 1e9:.2f} GB" if r["artifact_bytes"] else "-"
        print(f"{label} -q {scheme}: wall {r['wall_s']:.0f} s, peak RSS {peak}, artifact {size}"
              + (f"  FAILED: {r['error']}" if r["error"] else ""))
        for s in r["stages"]:
            print(f"    {s['stage']:<40} peak {s['peak_rss_bytes'] / 1e9:6.2f} GB  {s['s']:7.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": label, "source_bytes": source_bytes, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
