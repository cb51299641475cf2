"""Which of transformers' causal-LM architectures edgegen converts: a tiny random-weight model of every
``model_type`` in the installed transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` that can be built from its
config with tiny sizes, converted with ``edgegen.convert`` (default flags) in a subprocess with a timeout.

    python benchmarks/lm_architectures.py                      # every buildable type (slow: ~20 s each)
    python benchmarks/lm_architectures.py mixtral mamba gpt2   # some
    python benchmarks/lm_architectures.py --json out.json

Each type ends in one of:
  converts      the artifact's greedy tokens are identical to transformers' (the converter's validation)
  mismatch      converted, but greedy tokens differ (a bug: please report)
  refused       conversion failed with one line (an edgegen error: ConversionError / UnsupportedModelError)
  traceback     anything else: a Python traceback, a crash, or the timeout (a bug)
  not built     transformers cannot build a tiny model of it from its config alone (needs a vision tower,
                an encoder, a tokenizer of its own, ...): not counted
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Tiny sizes, given to a config class only where its __init__ takes the name.  Sizes are chosen so that
#: every common derivation stays whole: 4 heads of 8 (32 hidden), 2 KV heads, 2 layers, 4 experts top-2.
TINY: dict[str, Any] = {
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4,
    "num_key_value_heads": 2, "n_kv_heads": 2, "multi_query_group_num": 2,
    "hidden_size": 32, "n_embd": 32, "d_model": 32, "dim": 32, "embed_dim": 32,
    "intermediate_size": 64, "n_inner": 64, "ffn_dim": 64, "ffn_hidden_size": 64, "d_ff": 64,
    "max_position_embeddings": 128, "n_positions": 128, "n_ctx": 128, "max_seq_len": 128, "seq_length": 128,
    "head_dim": 8, "rotary_dim": 4, "partial_rotary_factor": 0.5,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "top_k": 2, "n_group": 1, "topk_group": 1,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "expert_interval": 1,
    "n_shared_experts": 1, "first_k_dense_replace": 1,
    "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 6,
    "sliding_window": 64, "attention_chunk_size": 64,
    "state_size": 8, "conv_kernel": 4, "expand": 2, "time_step_rank": 4, "n_groups": 1,
    "attention_hidden_size": 32, "lru_width": 32, "block_types": None,
    "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 4, "mamba_n_heads": 4,
    "mamba_d_head": 16, "mamba_n_groups": 1, "mamba_headdim": 16,
}
VOCAB = 320
TIMEOUT_S = 240


def tiny_kwargs(config_class: Any) -> dict[str, Any]:
    """The TINY entries ``config_class.__init__`` takes by name (layer-type lists derived by the class)."""
    params = inspect.signature(config_class.__init__).parameters
    kwargs = {k: v for k, v in TINY.items() if k in params and v is not None}
    if "kv_lora_rank" in params:   # multi-head latent attention expands keys and values to every query head
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", 4)
    for key in ("layer_types", "block_types", "layers_block_type"):
        if key in params:
            kwargs.pop(key, None)
    return kwargs


def tiny_config(model_type: str) -> Any:
    """A tiny config of ``model_type`` (raises what transformers raises when it cannot be built small)."""
    from transformers import AutoConfig, CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                  **tiny_kwargs(config_class))
    for name in ("layer_types", "block_types", "layers_block_type"):        # lists longer than 2 layers
        value = getattr(config, name, None)
        if isinstance(value, list) and len(value) > 2:
            setattr(config, name, value[:2] if len(set(value[:2])) > 1 or len(set(value)) == 1
                    else [value[0], next(v for v in value if v != value[0])])
    return config


def write_tiny(dest: Path, model_type: str, seed: int = 0) -> Path:
    """A random-weight tiny ``model_type`` causal LM with a byte-level BPE tokenizer saved in ``dest``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    config = tiny_config(model_type)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger logits than init's near-uniform ones, so greedy has clear winners
        head = model.get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is not None:
            head.weight.mul_(8.0)
    model.save_pretrained(dest)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
            "The quick brown fox jumps over the lazy dog. " * 4, "import os\nimport sys\nclass Reader:\n"]
    tok.train_from_iterator(text, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>").save_pretrained(dest)
    return dest


def _child(model_type: str, root: str) -> None:
    """In the subprocess: build, convert, print one JSON line ``RESULT {...}``."""
    import edgegen
    from edgegen.errors import EdgegenError

    try:
        hf = write_tiny(Path(root) / "hf", model_type)
    except Exception as exc:  # noqa: BLE001  (a type that needs more than its config: not counted)
        print("RESULT " + json.dumps({"status": "not built", "detail": f"{type(exc).__name__}: "
                                      + (str(exc).strip().splitlines() or [""])[0][:200]}))
        return
    try:
        artifact = edgegen.convert(hf, Path(root) / "artifact", report=lambda line: None)
    except EdgegenError as exc:
        message = str(exc)
        status = "refused" if "\n" not in message.strip() else "traceback"
        print("RESULT " + json.dumps({"status": status, "detail": f"{type(exc).__name__}: {message[:400]}"}))
        return
    manifest = json.loads((artifact / "edgegen.json").read_text())
    v = manifest["validation"]
    status = "converts" if v.get("greedy_identical") else "mismatch"
    keep = "logits_to_keep" in manifest["graphs"]["decoder"].get("inputs", {}) if isinstance(
        manifest["graphs"]["decoder"].get("inputs"), dict) else any(
        i.get("name") == "logits_to_keep" for i in manifest["graphs"]["decoder"].get("inputs", []))
    print("RESULT " + json.dumps({"status": status, "detail": f"{manifest['source']['converter']}; greedy "
                                  f"{v['greedy_matching_tokens']}/{v['greedy_tokens']}; max|dlogits| "
                                  f"{v['max_abs_logits_error']:.1e}" + ("" if keep else "; no logits_to_keep")}))


def run_one(model_type: str, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"arch-{model_type}-") as root:
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", model_type, root], capture_output=True,
                                  text=True, timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        except subprocess.TimeoutExpired:
            return {"type": model_type, "status": "traceback", "detail": f"timed out after {timeout:.0f} s",
                    "seconds": timeout}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if lines:
        out = json.loads(lines[-1][len("RESULT "):])
    else:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        out = {"status": "traceback", "detail": (tail[-1] if tail else f"exit {proc.returncode}")[:300]}
    return {"type": model_type, **out, "seconds": round(time.perf_counter() - started, 1)}


def causal_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("types", nargs="*", help="model types (default: every causal-LM type transformers has)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per type")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    rows = []
    for model_type in args.types or causal_types():
        row = run_one(model_type, args.timeout)
        rows.append(row)
        print(f"{row['type']:<22} {row['status']:<10} {row['seconds']:>6.1f}s  {row['detail']}", flush=True)
    counted = [r for r in rows if r["status"] != "not built"]
    tally = {s: sum(r["status"] == s for r in counted) for s in ("converts", "mismatch", "refused", "traceback")}
    print(f"\n{len(rows)} types tried, {len(counted)} built tiny: " + ", ".join(f"{v} {k}" for k, v in tally.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
