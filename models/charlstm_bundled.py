"""edgegen's bundled character-level LSTM: ``model, tokenizer = load()``.

The checkpoint (models/charlstm/: model.safetensors, tokenizer.json, MODEL_CARD.md) is
produced by models/train_charlstm.py.  The model is models/charlstm.py's CharLSTM, returned
in eval mode with float32 weights on the CPU.  Loadable by path: models/ is not a package.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tokenizers import Tokenizer

DEFAULT_DIR = Path(__file__).resolve().parent / "charlstm"
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
    """(CharLSTM in eval mode, tokenizers.Tokenizer) from checkpoint_dir (default: models/charlstm/)."""
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else DEFAULT_DIR
    weights, vocab = folder / "model.safetensors", folder / "tokenizer.json"
    for path in (weights, vocab):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; train the model with: python models/train_charlstm.py "
                                    f"--out {folder}")
    model = _sibling("charlstm").CharLSTM.from_checkpoint(weights).eval()
    tokenizer = Tokenizer.from_file(str(vocab))
    if tokenizer.get_vocab_size() != model.config.vocab_size or tokenizer.token_to_id(EOS) is None:
        raise ValueError(f"{folder}: tokenizer.json ({tokenizer.get_vocab_size()} tokens) does not match "
                         f"model.safetensors (vocab_size {model.config.vocab_size}) or lacks {EOS}")
    return model, tokenizer


def spec(checkpoint_dir: str | Path | None = None):
    """The edgegen RNNLMSpec of this model: ``edgegen convert models/charlstm_bundled.py:spec -o charlstm-artifact``."""
    import hashlib

    from edgegen import RNNLMSpec

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else DEFAULT_DIR
    model, tokenizer = load(folder)
    eos = tokenizer.token_to_id(EOS)
    return RNNLMSpec(module=model, tokenizer=tokenizer, state_shapes=model.state_shapes, eos_token_ids=(eos,),
                     pad_token_id=eos, defaults={"temperature": 0.8, "top_k": 20, "max_new_tokens": 200},
                     name="models/charlstm_bundled.py (character-level LSTM, trained on the CPython stdlib)",
                     checkpoint_sha256=hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
