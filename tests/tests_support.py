"""Helpers for tests: tiny real ONNX graphs and artifacts built in the test, no downloads.

Importable as ``tests_support`` because pytest puts tests/ (the conftest's folder) on sys.path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgegen.manifest import Source


def tiny_graph(opset: int = 17, op: str = "Add", domain: str = "") -> onnx.ModelProto:
    """y[batch, 4] = x[batch, 4] (op) w, with w a constant; plus a second output z = -x."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], np.arange(4, dtype=np.float32).tolist())
    nodes = [helper.make_node(op, ["x", "w"], ["y"], domain=domain), helper.make_node("Neg", ["x"], ["z"])]
    graph = helper.make_graph(
        nodes, "tiny",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
                 helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, opset)] if domain else
                              [helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def write_tiny_artifact(dest: Path, family: str = "gan", model: onnx.ModelProto | None = None) -> Path:
    from edgegen.converters.writer import ArtifactWriter

    with ArtifactWriter(dest) as writer:
        writer.add_graph("generator", model if model is not None else tiny_graph(), precision="fp32")
        writer.add_asset("notes", "notes.txt", "hello\n")
        writer.write(writer.manifest(family=family, source=Source(model_class="tests.Tiny", converter="tests", opset=17),
                                     sampler={"latent": 4}, validation={"max_abs_error": 0.0}))
        return writer.commit()


# -- tiny Hugging Face causal LMs (random weights) with a tokenizer trained here ---------------

TOKENIZER_CORPUS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The quick brown fox jumps over the lazy dog. Once upon a time, in a small town, there lived a cat.",
    "import os\nimport sys\n\nclass Reader:\n    def __init__(self, path):\n        self.path = path\n",
    "héllo wörld — naïve café, 日本語のテキスト 🙂 and more text for merges.",
]

#: Tiny configs of each architecture the causal-LM converter must handle (vocab 320 >= tokenizer's).
TINY_LM_CONFIGS: dict[str, dict] = {
    "gpt2": dict(n_layer=2, n_head=2, n_embd=32, n_positions=96),
    "llama": dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                  intermediate_size=64, max_position_embeddings=96),
    "bloom": dict(n_layer=2, n_head=2, hidden_size=32),
    "codegen": dict(n_layer=2, n_head=4, n_embd=32, n_positions=96, n_ctx=96, rotary_dim=4),
    "gpt_neox": dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                     max_position_embeddings=96),
    "qwen2": dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                  intermediate_size=64, max_position_embeddings=96),
    "mistral": dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                    intermediate_size=64, max_position_embeddings=96, sliding_window=None),
    "phi": dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                max_position_embeddings=96),
    # Not covered by Optimum's exporter: exercises edgegen's own export.
    "biogpt": dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                   max_position_embeddings=96),
}


def train_tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer (GPT-2 style) trained on TOKENIZER_CORPUS, with <|endoftext|> = id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer)
    return tok


def convert_tiny_cache_lm(root: Path, kind: str) -> tuple[Path, Path]:
    """(artifact, Hugging Face directory) of a tiny LM with a 192-position context: ``gpt2`` (a growing KV cache)
    or ``llama-gqa`` (GroupQueryAttention, a shared KV buffer; head size 16, the smallest ONNX Runtime's CPU
    GroupQueryAttention takes)."""
    import edgegen

    if kind == "gpt2":
        hf = write_tiny_hf_lm(root / "hf", "gpt2", n_positions=192)
        return edgegen.convert(hf, root / "art", optimize=False), hf
    hf = write_tiny_hf_lm(root / "hf", "llama", hidden_size=64, max_position_embeddings=192)
    return edgegen.convert(hf, root / "art", attention="gqa"), hf


def write_tiny_hf_lm(dest: Path, arch: str, seed: int = 0, **overrides: object) -> Path:
    """Save a random-weight ``arch`` causal LM with a trained tokenizer as a Hugging Face directory
    (``overrides``: config fields over TINY_LM_CONFIGS[arch])."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = train_tiny_tokenizer()
    config = AutoConfig.for_model(arch, vocab_size=320, bos_token_id=0, eos_token_id=0, **{**TINY_LM_CONFIGS[arch], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger logits than init's near-uniform ones, so greedy has clear winners
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(dest)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>").save_pretrained(dest)
    return dest


#: The ChatML template (Qwen2, SmolLM) as a tokenizer_config.json holds it.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")


def write_chat_lm(dest: Path, arch: str, template: str | None = CHATML, **overrides: object) -> Path:
    """write_tiny_hf_lm's model with <|im_start|> / <|im_end|> added to its tokenizer and ``template`` saved as
    its chat template (None: none), as transformers' save_pretrained writes them."""
    from transformers import PreTrainedTokenizerFast

    write_tiny_hf_lm(dest, arch, **overrides)
    tok = PreTrainedTokenizerFast.from_pretrained(dest)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert len(tok) <= 320                       # within the model's 320 logits
    tok.chat_template = template
    tok.save_pretrained(dest)
    return dest


MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def torch_greedy(hf_dir: Path, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy tokens by full recompute with the transformers model (no cache, no edgegen code)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt_ids):].tolist()


def load_models_file(name: str):
    """Import ``models/<name>.py`` by path (models/ is not a package and is never put on sys.path), under the
    name models/pycode.py's own loader uses, so each file is imported once."""
    return load_by_path(name, MODELS_DIR / f"{name}.py")


def fake_model(x: np.ndarray, t: float, variance: str | None = None) -> np.ndarray:
    """A deterministic stand-in denoiser for scheduler tests: [B, C, H, W] -> [B, C, H, W] (or [B, 2C, H, W]
    with a ``learned`` / ``learned_range`` variance)."""
    pattern = np.linspace(-1.0, 1.0, x[0].size).reshape(x.shape[1:])
    out = 0.8 * np.tanh(x) + 0.3 * np.sin(float(t) / 150.0 + 3.0 * pattern)
    if variance == "learned_range":                                # in [-1, 1]: between beta~ and beta
        out = np.concatenate([out, np.tanh(x + pattern)], axis=1)
    elif variance == "learned":                                    # a positive variance
        out = np.concatenate([out, 1e-3 * (1.5 + np.tanh(x))], axis=1)
    return out.astype(np.float32)


# -- the CLI and the malformed corpus -------------------------------------------------------------------------

def run_cli(*args: object):
    """``edgegen ARGS`` through click's runner, exceptions raised (a traceback is a test failure)."""
    from click.testing import CliRunner

    from edgegen.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *parts: str) -> None:
    """Exit code 1, exactly one line ``Error: ...`` holding every one of ``parts``, no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    for part in parts:
        assert part in lines[0], lines[0]


MALFORMED_DIR = Path(__file__).resolve().parent / "malformed"


def load_make_corpus():
    """tests/malformed/make_corpus.py, loaded by path once (tests/ is not a package)."""
    return load_by_path("edgegen_tests_make_corpus", MALFORMED_DIR / "make_corpus.py")


def load_by_path(name: str, path: Path):
    """The module at ``path``, imported once as ``name`` (registered before it runs: dataclasses look their
    module up while the file runs)."""
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def json_paths(doc: object) -> list[tuple]:
    """The path (keys and indices) of every value inside a parsed JSON document, depth first."""
    paths: list[tuple] = []

    def walk(node: object, path: tuple) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            paths.append(path + (key,))
            walk(child, path + (key,))

    walk(doc, ())
    return paths


def json_parent(doc: object, path: tuple) -> object:
    """The dict or list holding the value at ``path``."""
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node
