"""Train edgegen's bundled code-completion model on the Python standard library's own source.

    python models/train_pycode.py                      # the bundled checkpoint, into models/pycode/
    python models/train_pycode.py --steps 30 --out /tmp/x --max-files 8 --vocab-size 384 \\
        --n-layer 1 --n-head 2 --n-embd 32 --block-size 64 --batch-size 8   # a smoke run

Data: the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` of the interpreter that runs
this script, in sorted order, without test folders, site-packages and generated data
(pydoc_data, the gencodec charmap tables, _sysconfigdata, config-*/).  A file is held
out when a hash of its relative path says so (about 5 % of files), so the split does not
depend on which files exist.  Each file is followed by ``<|endoftext|>``.

Tokenizer: byte-level BPE trained here with ``tokenizers`` on the training files only.
Model: models/nanogpt.py, trained with AdamW, linear warmup then cosine decay, from
fixed seeds, with a fixed data order and a fixed number of threads.

Writes, into --out: ``tokenizer.json``, ``model.safetensors`` (float16 weights, config in
the metadata) and ``MODEL_CARD.md``.  Loadable by path (tests do): nothing runs on import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


if "training" not in sys.modules:  # models/ is not a package: the scripts' shared helper, loaded by path
    _spec = importlib.util.spec_from_file_location("training", Path(__file__).with_name("training.py"))
    _spec.loader.exec_module(sys.modules.setdefault("training", importlib.util.module_from_spec(_spec)))
training = sys.modules["training"]


nanogpt = training.sibling("nanogpt")
GPT, GPTConfig = nanogpt.GPT, nanogpt.GPTConfig

EOS = "<|endoftext|>"
HELDOUT_PERCENT = 5
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__", "pydoc_data"})
DEFAULT_OUT = Path(__file__).resolve().parent / "pycode"
SAMPLE_PROMPT = "def fibonacci(n):"


# -- data ------------------------------------------------------------------------------------
def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _generated(text: str) -> bool:
    return "with gencodec.py" in text[:400]  # encodings/cp1252.py and friends: charmap tables


def list_source_files(root: Path | None = None) -> list[str]:
    """Relative POSIX paths of the usable .py files under root, sorted."""
    root = root or stdlib_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")]
        for name in filenames:
            if name.endswith(".py") and not name.startswith("_sysconfigdata"):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def is_heldout(relpath: str) -> bool:
    """The held-out set: files whose relative path hashes into the first HELDOUT_PERCENT buckets."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT


def read_sources(relpaths: list[str], root: Path | None = None) -> list[tuple[str, str]]:
    """(relpath, text) of each file that is UTF-8 and not generated, in the given order."""
    root = root or stdlib_root()
    out = []
    for rel in relpaths:
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and not _generated(text):
            out.append((rel, text))
    return out


def split_sources(root: Path | None = None, max_files: int | None = None
                  ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, heldout) lists of (relpath, text); max_files keeps the first N of each."""
    files = list_source_files(root)
    train = [f for f in files if not is_heldout(f)]
    heldout = [f for f in files if is_heldout(f)]
    if max_files is not None:
        train, heldout = train[:max_files], heldout[:max(1, max_files // 4)]
    return read_sources(train, root), read_sources(heldout, root)


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenizer and decoder) with EOS as the only special token (id 0)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """One stream of ids [N]: each text's tokens followed by EOS."""
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)  # [N]


# -- evaluation ------------------------------------------------------------------------------
@torch.no_grad()
def heldout_loss(model: GPT, tokens: torch.Tensor, block_size: int | None = None, max_windows: int | None = None,
                 batch_size: int = 16) -> float:
    """Mean next-token loss (nats) over consecutive non-overlapping windows of a token stream [N]."""
    block = block_size or model.config.block_size
    starts = list(range(0, len(tokens) - 1, block))
    if max_windows is not None:
        starts = starts[:max_windows]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    full = [s for s in starts if s + block < len(tokens)]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[s] for s in starts if s + block >= len(tokens)]  # the last window may be short
    for chunk in batches:
        length = min(block, len(tokens) - 1 - chunk[0])
        x = torch.stack([tokens[s:s + length] for s in chunk])  # [b, t]
        y = torch.stack([tokens[s + 1:s + 1 + length] for s in chunk])  # [b, t]
        loss = model.loss(x, y)
        total += float(loss) * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def complete(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 80, temperature: float = 0.0,
             seed: int = 0) -> str:
    """prompt + its continuation, stopping at EOS (greedy when temperature == 0)."""
    generator = torch.Generator().manual_seed(seed)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    new = model.generate(ids, max_new_tokens, temperature=temperature, top_k=None,
                         eos_token_id=tokenizer.token_to_id(EOS), generator=generator)
    return tokenizer.decode(ids + new)


# -- training --------------------------------------------------------------------------------
@dataclass
class Options:
    out: Path = DEFAULT_OUT
    steps: int = 2000
    seed: int = 1337
    threads: int = 2
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256
    batch_size: int = 8
    lr: float = 4e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_files: int | None = None
    eval_windows: int | None = None
    log_every: int = 100


@dataclass
class Result:
    config: GPTConfig
    parameters: int
    steps: int
    tokens_seen: int
    train_files: int
    heldout_files: int
    train_tokens: int
    heldout_tokens: int
    initial_loss: float  # train loss of the first batch, before any update
    final_train_loss: float  # mean over the last steps
    untrained_heldout_loss: float
    heldout_loss: float  # of the float16 checkpoint as saved
    train_seconds: float
    median_step_seconds: float  # a machine shared with other work slows some steps, not the median
    total_seconds: float
    sample: str
    losses: list[float] = field(default_factory=list)


def lr_at(step: int, opts: Options) -> float:
    """Linear warmup to opts.lr, then cosine decay to opts.lr * min_lr_ratio at the last step."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    progress = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: GPT, opts: Options) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matmul weights and embeddings
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases, LayerNorm
    return torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95))


def train(opts: Options, log=print) -> Result:
    started = training.start(opts)
    opts.out.mkdir(parents=True, exist_ok=True)

    train_docs, heldout_docs = split_sources(max_files=opts.max_files)
    log(f"data: {len(train_docs)} train files, {len(heldout_docs)} held-out files")
    tokenizer = train_tokenizer([text for _, text in train_docs], opts.vocab_size)
    train_tokens = encode_documents(tokenizer, [text for _, text in train_docs])  # [N]
    heldout_tokens = encode_documents(tokenizer, [text for _, text in heldout_docs])  # [M]
    log(f"tokenizer: vocab {tokenizer.get_vocab_size()}; {len(train_tokens)} train / {len(heldout_tokens)} held-out tokens "
        f"({time.perf_counter() - started:.1f} s)")

    config = GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=opts.block_size, n_layer=opts.n_layer,
                       n_head=opts.n_head, n_embd=opts.n_embd)
    model = GPT(config)
    log(f"model: {config} -> {model.num_parameters():,} parameters")
    untrained = heldout_loss(model, heldout_tokens, max_windows=opts.eval_windows)
    log(f"untrained held-out loss {untrained:.3f} (perplexity {math.exp(untrained):.1f})")

    optimizer = make_optimizer(model, opts)
    data_order = torch.Generator().manual_seed(opts.seed)
    block, span = opts.block_size, len(train_tokens) - opts.block_size - 1
    if span < 1:
        raise ValueError(f"only {len(train_tokens)} training tokens: fewer than block_size + 2")
    offsets = torch.arange(block)  # [T]
    model.train()
    losses, step_seconds = [], []
    train_started = time.perf_counter()
    for step in range(opts.steps):
        step_started = time.perf_counter()
        starts = torch.randint(0, span, (opts.batch_size, 1), generator=data_order)  # [B, 1]
        x = train_tokens[starts + offsets]  # [B, T]
        y = train_tokens[starts + offsets + 1]  # [B, T]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, opts)
        loss = model.loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optimizer.step()
        losses.append(loss.detach().item())
        step_seconds.append(time.perf_counter() - step_started)
        if opts.log_every and (step % opts.log_every == 0 or step == opts.steps - 1):
            log(f"step {step:5d}  loss {losses[-1]:.3f}  lr {lr_at(step, opts):.2e}  "
                f"{time.perf_counter() - train_started:.0f} s")
    train_seconds = time.perf_counter() - train_started

    # Everything reported is measured on the checkpoint as saved (float16 weights, upcast on load).
    tokenizer.save(str(opts.out / "tokenizer.json"))
    checkpoint = opts.out / "model.safetensors"
    model.save_checkpoint(checkpoint, dtype=torch.float16,
                          metadata={"eos_token": EOS, "eos_token_id": str(tokenizer.token_to_id(EOS))})
    saved = GPT.from_checkpoint(checkpoint).eval()
    final = heldout_loss(saved, heldout_tokens, max_windows=opts.eval_windows)
    sample = complete(saved, tokenizer, SAMPLE_PROMPT, max_new_tokens=80)
    tail = losses[-min(50, len(losses)):]
    result = Result(config=config, parameters=model.num_parameters(), steps=opts.steps,
                    tokens_seen=opts.steps * opts.batch_size * block, train_files=len(train_docs),
                    heldout_files=len(heldout_docs), train_tokens=len(train_tokens), heldout_tokens=len(heldout_tokens),
                    initial_loss=losses[0] if losses else float("nan"), final_train_loss=sum(tail) / max(1, len(tail)),
                    untrained_heldout_loss=untrained, heldout_loss=final, train_seconds=train_seconds,
                    median_step_seconds=sorted(step_seconds)[len(step_seconds) // 2],
                    total_seconds=time.perf_counter() - started, sample=sample, losses=losses)
    log(f"held-out loss {final:.3f} (perplexity {math.exp(final):.2f}); training {train_seconds:.0f} s")
    (opts.out / "MODEL_CARD.md").write_text(model_card(result, opts, checkpoint), encoding="utf-8")
    return result


def model_card(r: Result, opts: Options, checkpoint: Path) -> str:
    c = r.config
    size_mb = checkpoint.stat().st_size / 1e6
    eval_scope = "all held-out windows" if opts.eval_windows is None else f"the first {opts.eval_windows} windows"
    data = training.stdlib_data_lines(SKIP_DIRS, HELDOUT_PERCENT, EOS, (r.train_files, r.heldout_files),
                                      (r.train_tokens, r.heldout_tokens), "tokens", licence_note=".",
                                      generated="`pydoc_data/`, the gencodec charmap tables in `encodings/`,\n"
                                                "  `_sysconfigdata*`, `config-*/`")
    return f"""# pycode: edgegen's bundled code-completion model

A {r.parameters / 1e6:.2f} M-parameter nanoGPT-style decoder (`models/nanogpt.py`) that completes
Python code.  It is edgegen's reference causal LM: small enough to train on a laptop CPU in
minutes and to ship in the repository, real enough to exercise conversion and generation.
It is a test fixture, not a useful assistant: expect plausible-looking but often wrong code.

Load it with `models/pycode.py`: `model, tokenizer = load()`.  Retrain with
`python models/train_pycode.py` (the numbers below are from that run).

## Data

{data}

## Tokenizer

Byte-level BPE trained with `tokenizers` on the training files only: ByteLevel
pre-tokenizer and decoder (no prefix space), {c.vocab_size} tokens, `{EOS}` is id
0 and serves as end of sequence and file separator.  Decoding the encoding of any text
gives the text back.  File: `tokenizer.json`.

## Model

| setting | value |
| --- | --- |
| layers / heads / width | {c.n_layer} / {c.n_head} / {c.n_embd} |
| context (block_size) | {c.block_size} tokens |
| vocabulary | {c.vocab_size} |
| parameters | {r.parameters:,} (embeddings tied) |
| checkpoint | `model.safetensors`, float16 weights ({size_mb:.1f} MB), config JSON in the metadata |

Pre-LN blocks, learned position embeddings, GELU MLP, no dropout.

## Training

| setting | value |
| --- | --- |
| steps | {r.steps} |
| batch | {opts.batch_size} x {c.block_size} tokens, windows at random offsets |
| tokens seen | {r.tokens_seen:,} ({r.tokens_seen / max(1, r.train_tokens):.2f} epochs) |
| optimizer | AdamW, betas (0.9, 0.95), weight decay {opts.weight_decay} on matrices and embeddings |
{training.lm_training_rows(opts, r, order='data', setup='tokenizer')}

## Results

Losses are mean next-token cross-entropy in nats; held-out figures use consecutive
{c.block_size}-token windows of the held-out stream ({eval_scope}) and the saved float16 checkpoint.

| measure | value |
| --- | --- |
| train loss, first batch (before any update) | {r.initial_loss:.3f} |
| final train loss (mean of the last {min(50, r.steps)} steps) | {r.final_train_loss:.3f} |
| held-out loss | {r.heldout_loss:.3f} |
| held-out perplexity | {math.exp(r.heldout_loss):.2f} |
| held-out perplexity of the untrained model (same config and seed) | {math.exp(r.untrained_heldout_loss):.1f} |

## Sample

Greedy completion of `{SAMPLE_PROMPT}` (at most 80 new tokens):

```python
{r.sample}
```
"""


def parse_args(argv: list[str] | None = None) -> Options:
    d, flag = Options(), training.flag
    p = training.argument_parser(
        __doc__, out=flag(d.out, "output folder (default: models/pycode/)"), steps=d.steps, seed=d.seed,
        threads=d.threads, vocab_size=d.vocab_size, n_layer=d.n_layer, n_head=d.n_head, n_embd=d.n_embd,
        block_size=d.block_size, batch_size=d.batch_size, lr=d.lr,
        warmup=flag(None, "warmup steps (default: min(100, steps // 10))", int),
        max_files=flag(None, "use only the first N training files (smoke runs)", int),
        eval_windows=flag(None, "evaluate on at most N held-out windows", int), log_every=d.log_every)
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    warmup = a.warmup if a.warmup is not None else max(1, min(d.warmup, a.steps // 10))
    return Options(out=a.out, steps=a.steps, seed=a.seed, threads=a.threads, vocab_size=a.vocab_size,
                   n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, block_size=a.block_size,
                   batch_size=a.batch_size, lr=a.lr, warmup=warmup, max_files=a.max_files,
                   eval_windows=a.eval_windows, log_every=a.log_every)


def main(argv: list[str] | None = None) -> Result:
    return train(parse_args(argv), log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
    main()
