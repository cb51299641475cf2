"""edgegen's bundled code-completion model: ``model, tokenizer = load()``.

The checkpoint (models/pycode/: model.safetensors, tokenizer.json, MODEL_CARD.md) is
produced by models/train_pycode.py.  The model is models/nanogpt.py's GPT, returned in
eval mode with float32 weights on the CPU.  Loadable by path: models/ is not a package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tokenizers import Tokenizer

DEFAULT_DIR = Path(__file__).resolve().parent / "pycode"
EOS = "<|endoftext|>"


def _sibling(name: str):
    """Import models/<name>.py by path (models/ is not a package and need not be on sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load(checkpoint_dir: str | Path | None = None):
    """(GPT in eval mode, tokenizers.Tokenizer) from checkpoint_dir (default: models/pycode/)."""
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else DEFAULT_DIR
    weights, vocab = folder / "model.safetensors", folder / "tokenizer.json"
    for path in (weights, vocab):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; train the model with: python models/train_pycode.py "
                                    f"--out {folder}")
    model = _sibling("nanogpt").GPT.from_checkpoint(weights).eval()
    tokenizer = Tokenizer.from_file(str(vocab))
    if tokenizer.get_vocab_size() != model.config.vocab_size or tokenizer.token_to_id(EOS) is None:
        raise ValueError(f"{folder}: tokenizer.json ({tokenizer.get_vocab_size()} tokens) does not match "
                         f"model.safetensors (vocab_size {model.config.vocab_size}) or lacks {EOS}")
    return model, tokenizer


def spec(checkpoint_dir: str | Path | None = None):
    """The edgegen CausalLMSpec of this model: ``edgegen convert models/pycode.py:spec -o pycode-artifact``."""
    import hashlib

    from edgegen import CausalLMSpec

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else DEFAULT_DIR
    model, tokenizer = load(folder)
    c = model.config
    eos = tokenizer.token_to_id(EOS)
    return CausalLMSpec(module=model, tokenizer=tokenizer, context_length=c.block_size, num_layers=c.n_layer,
                        num_kv_heads=c.n_head, head_dim=c.n_embd // c.n_head, eos_token_ids=(eos,),
                        pad_token_id=eos, defaults={"temperature": 0.7, "top_k": 40, "repetition_penalty": 1.1,
                                                        "max_new_tokens": 128},
                        name="models/pycode.py (nanoGPT, trained on the CPython stdlib)",
                        checkpoint_sha256=hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
