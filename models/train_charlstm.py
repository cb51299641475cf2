"""Train edgegen's bundled character-level LSTM on the Python standard library's own source.

    python models/train_charlstm.py                     # the bundled checkpoint, into models/charlstm/
    python models/train_charlstm.py --steps 20 --out /tmp/x --max-files 6 --hidden 64 --n-embd 16 \\
        --seq-len 64 --batch-size 8 --eval-chars 4000   # a smoke run

Data: the same ``.py`` files and the same held-out split as models/train_pycode.py (its
helpers are imported, not copied).  Each file is followed by ``<|endoftext|>``.

Tokenizer: byte level, built with ``tokenizers`` (no training): a BPE model with no merges over
the 256 ByteLevel characters, so every byte of the UTF-8 text is one token, plus
``<|endoftext|>`` at id 0.  Decoding the encoding of any text gives the text back.

Model: models/charlstm.py's CharLSTM, trained with truncated BPTT: the training stream is cut
into batch_size contiguous lanes, read seq_len characters at a time, the LSTM state carried
(detached) from one chunk to the next.  AdamW, fixed seeds, fixed data order, fixed threads.

Writes, into --out: ``tokenizer.json``, ``model.safetensors`` (float16 weights, config in
the metadata, metadata sorted so the sha256 is stable) and ``MODEL_CARD.md``.  Loadable by
path (tests do): nothing runs on import.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers


if "training" not in sys.modules:  # models/ is not a package: the scripts' shared helper, loaded by path
    _spec = importlib.util.spec_from_file_location("training", Path(__file__).with_name("training.py"))
    _spec.loader.exec_module(sys.modules.setdefault("training", importlib.util.module_from_spec(_spec)))
training = sys.modules["training"]


charlstm = training.sibling("charlstm")
train_pycode = training.sibling("train_pycode")
CharLSTM, LSTMConfig = charlstm.CharLSTM, charlstm.LSTMConfig
split_sources, HELDOUT_PERCENT, SKIP_DIRS = (train_pycode.split_sources, train_pycode.HELDOUT_PERCENT,
                                             train_pycode.SKIP_DIRS)

EOS = "<|endoftext|>"
DEFAULT_OUT = Path(__file__).resolve().parent / "charlstm"
SAMPLE_PROMPT = "def "
LN2 = math.log(2)


# -- tokenizer -------------------------------------------------------------------------------
def build_tokenizer() -> Tokenizer:
    """Byte-level tokenizer: EOS is id 0, the 256 ByteLevel characters are ids 1..256 (in byte order)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=lambda ch: _BYTE_OF[ch])
    vocab = {EOS: 0, **{ch: i + 1 for i, ch in enumerate(byte_chars)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS])
    return tokenizer


def _byte_chars() -> dict[str, int]:
    """GPT-2's byte -> printable character map, inverted (the ByteLevel pre-tokenizer's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


_BYTE_OF = _byte_chars()


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """One stream of ids [N]: each text's tokens followed by EOS."""
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)  # [N]


# -- evaluation ------------------------------------------------------------------------------
def _lanes(tokens: torch.Tensor, lanes: int) -> torch.Tensor:
    """tokens [N] cut into `lanes` contiguous rows [lanes, N // lanes] (the tail is dropped)."""
    length = len(tokens) // lanes
    return tokens[:lanes * length].view(lanes, length)


@torch.no_grad()
def heldout_loss(model: CharLSTM, tokens: torch.Tensor, max_chars: int | None = None, lanes: int = 32,
                 chunk: int = 256) -> float:
    """Mean next-token loss (nats per token = per byte) over a stream [N], read as `lanes` contiguous
    lanes with the state carried, so each prediction sees everything before it in its lane."""
    if max_chars is not None:
        tokens = tokens[:max_chars + 1]
    lanes = max(1, min(lanes, (len(tokens) - 1) // 2))
    x_all, y_all = _lanes(tokens[:-1], lanes), _lanes(tokens[1:], lanes)  # [L, M] each
    was_training = model.training
    model.eval()
    h, c = model.zero_states(lanes)
    total, count = 0.0, 0
    for s in range(0, x_all.shape[1], chunk):
        x, y = x_all[:, s:s + chunk], y_all[:, s:s + chunk]  # [L, t]
        logits, h, c = model(x, h, c)  # [L, t, V]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                         reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return total / count


@torch.no_grad()
def complete(model: CharLSTM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 200,
             temperature: float = 0.0, seed: int = 0) -> str:
    """prompt + its continuation, stopping at EOS (greedy when temperature == 0)."""
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.token_to_id(EOS)
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    h, c = model.zero_states(1)
    logits, h, c = model(torch.tensor([ids], dtype=torch.long), h, c)
    new: list[int] = []
    for _ in range(max_new_tokens):
        last = logits[0, -1]
        if temperature > 0:
            token = int(torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator))
        else:
            token = int(last.argmax())
        if token == eos:
            break
        new.append(token)
        logits, h, c = model(torch.tensor([[token]], dtype=torch.long), h, c)
    return tokenizer.decode(ids + new)


# -- training --------------------------------------------------------------------------------
@dataclass
class Options:
    out: Path = DEFAULT_OUT
    steps: int = 1800
    seed: int = 1337
    threads: int = 2
    n_layer: int = 2
    hidden: int = 256
    n_embd: int = 64
    seq_len: int = 128
    batch_size: int = 32
    lr: float = 4e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_files: int | None = None
    eval_chars: int | None = 200_000
    log_every: int = 100


@dataclass
class Result:
    config: LSTMConfig
    parameters: int
    steps: int
    chars_seen: int
    train_files: int
    heldout_files: int
    train_chars: int
    heldout_chars: int
    initial_loss: float
    final_train_loss: float
    untrained_heldout_loss: float
    heldout_loss: float  # of the float16 checkpoint as saved
    train_seconds: float
    median_step_seconds: float
    total_seconds: float
    greedy_sample: str
    sample: str  # temperature 0.8, seed 0
    losses: list[float] = field(default_factory=list)


def lr_at(step: int, opts: Options) -> float:
    """Linear warmup to opts.lr, then cosine decay to opts.lr * min_lr_ratio at the last step."""
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    progress = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(opts: Options, log=print) -> Result:
    started = training.start(opts)
    opts.out.mkdir(parents=True, exist_ok=True)

    train_docs, heldout_docs = split_sources(max_files=opts.max_files)
    tokenizer = build_tokenizer()
    train_tokens = encode_documents(tokenizer, [text for _, text in train_docs])  # [N]
    heldout_tokens = encode_documents(tokenizer, [text for _, text in heldout_docs])  # [M]
    log(f"data: {len(train_docs)} train files ({len(train_tokens):,} bytes), {len(heldout_docs)} held-out files "
        f"({len(heldout_tokens):,} bytes)")

    config = LSTMConfig(vocab_size=tokenizer.get_vocab_size(), n_embd=opts.n_embd, hidden=opts.hidden,
                        n_layer=opts.n_layer)
    model = CharLSTM(config)
    log(f"model: {config} -> {model.num_parameters():,} parameters")
    untrained = heldout_loss(model, heldout_tokens, max_chars=opts.eval_chars)
    log(f"untrained held-out loss {untrained:.3f} nats/char ({untrained / LN2:.2f} bits/char)")

    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, betas=(0.9, 0.99), weight_decay=opts.weight_decay)
    # Truncated BPTT: batch_size contiguous lanes, read seq_len at a time; lane starts are shuffled once
    # by a seeded generator, and a lane that runs out wraps round to its start with a fresh state.
    lanes_x, lanes_y = _lanes(train_tokens[:-1], opts.batch_size), _lanes(train_tokens[1:], opts.batch_size)
    lane_len = lanes_x.shape[1]
    if lane_len < opts.seq_len:
        raise ValueError(f"only {len(train_tokens)} training bytes: fewer than batch_size * seq_len")
    order = torch.randperm(opts.batch_size, generator=torch.Generator().manual_seed(opts.seed))
    lanes_x, lanes_y = lanes_x[order], lanes_y[order]
    chunks_per_lane = lane_len // opts.seq_len
    h, c = model.zero_states(opts.batch_size)
    model.train()
    losses, step_seconds = [], []
    train_started = time.perf_counter()
    for step in range(opts.steps):
        step_started = time.perf_counter()
        k = step % chunks_per_lane
        if k == 0:
            h, c = model.zero_states(opts.batch_size)
        s = k * opts.seq_len
        x, y = lanes_x[:, s:s + opts.seq_len], lanes_y[:, s:s + opts.seq_len]  # [B, T]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, opts)
        logits, h, c = model(x, h, c)  # [B, T, V]
        h, c = h.detach(), c.detach()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
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
    saved = CharLSTM.from_checkpoint(checkpoint).eval()
    final = heldout_loss(saved, heldout_tokens, max_chars=opts.eval_chars)
    greedy = complete(saved, tokenizer, SAMPLE_PROMPT, max_new_tokens=200)
    sample = complete(saved, tokenizer, SAMPLE_PROMPT, max_new_tokens=200, temperature=0.8, seed=0)
    tail = losses[-min(50, len(losses)):]
    result = Result(config=config, parameters=model.num_parameters(), steps=opts.steps,
                    chars_seen=opts.steps * opts.batch_size * opts.seq_len, train_files=len(train_docs),
                    heldout_files=len(heldout_docs), train_chars=len(train_tokens), heldout_chars=len(heldout_tokens),
                    initial_loss=losses[0], final_train_loss=sum(tail) / len(tail), untrained_heldout_loss=untrained,
                    heldout_loss=final, train_seconds=train_seconds,
                    median_step_seconds=sorted(step_seconds)[len(step_seconds) // 2],
                    total_seconds=time.perf_counter() - started, greedy_sample=greedy, sample=sample, losses=losses)
    log(f"held-out loss {final:.3f} nats/char ({final / LN2:.2f} bits/char); training {train_seconds:.0f} s")
    (opts.out / "MODEL_CARD.md").write_text(model_card(result, opts, checkpoint), encoding="utf-8")
    return result


def model_card(r: Result, opts: Options, checkpoint: Path) -> str:
    c = r.config
    size_mb = checkpoint.stat().st_size / 1e6
    scope = "the whole held-out stream" if opts.eval_chars is None else f"the first {opts.eval_chars:,} held-out bytes"
    fence = "`" * 4
    data = training.stdlib_data_lines(SKIP_DIRS, HELDOUT_PERCENT, EOS, (r.train_files, r.heldout_files),
                                      (r.train_chars, r.heldout_chars), "bytes",
                                      licence_note="; the same files and split as `models/train_pycode.py`.",
                                      generated="`pydoc_data/`, the gencodec charmap tables, `_sysconfigdata*`, "
                                                "`config-*/`")
    return f"""# charlstm: edgegen's bundled character-level LSTM

A {r.parameters / 1e6:.2f} M-parameter character-level LSTM (`models/charlstm.py`) that
continues Python source one byte at a time.  It is edgegen's reference `rnn-lm` model:
small enough to train on a laptop CPU in minutes and to ship in the repository, real enough
to exercise conversion and generation.  A test fixture: expect Python-looking text, not code
that works.

Load it with `models/charlstm_bundled.py`: `model, tokenizer = load()`, or convert it with
`edgegen convert models/charlstm_bundled.py:spec -o charlstm-artifact`.  Retrain with
`python models/train_charlstm.py` (the numbers below are from that run).

## Data

{data}

## Tokenizer

Byte level, built with `tokenizers` (nothing trained): a BPE model with no merges over the 256
ByteLevel characters, ByteLevel pre-tokenizer and decoder (no prefix space).  Every byte of the
UTF-8 text is one token; `{EOS}` is id 0, bytes are ids 1-256 in byte order;
{c.vocab_size} tokens in all.  Decoding the encoding of any text gives the text back.
File: `tokenizer.json`.  "Per character" below means per byte (the stdlib is nearly all ASCII).

## Model

| setting | value |
| --- | --- |
| layers / hidden / embedding | {c.n_layer} / {c.hidden} / {c.n_embd} |
| vocabulary | {c.vocab_size} |
| parameters | {r.parameters:,} |
| state | h and c, each [batch, {c.n_layer}, {c.hidden}] |
| checkpoint | `model.safetensors`, float16 weights ({size_mb:.2f} MB), config JSON in the sorted metadata |

## Training

| setting | value |
| --- | --- |
| steps | {r.steps} |
| batch | {opts.batch_size} contiguous lanes x {opts.seq_len} bytes, truncated BPTT (state carried, detached) |
| bytes seen | {r.chars_seen:,} ({r.chars_seen / max(1, r.train_chars):.2f} epochs) |
| optimizer | AdamW, betas (0.9, 0.99), weight decay {opts.weight_decay} |
{training.lm_training_rows(opts, r, order='lane', setup='data')}

## Results

Losses are mean next-byte cross-entropy; held-out figures read {scope} as 32 contiguous
lanes with the state carried, with the saved float16 checkpoint.

| measure | value |
| --- | --- |
| train loss, first batch (before any update) | {r.initial_loss:.3f} nats |
| final train loss (mean of the last {min(50, r.steps)} steps) | {r.final_train_loss:.3f} nats ({r.final_train_loss / LN2:.2f} bits/char) |
| held-out loss | {r.heldout_loss:.3f} nats, **{r.heldout_loss / LN2:.2f} bits/char**, per-char perplexity {math.exp(r.heldout_loss):.2f} |
| held-out, untrained model (same config and seed) | {r.untrained_heldout_loss:.3f} nats, {r.untrained_heldout_loss / LN2:.2f} bits/char, per-char perplexity {math.exp(r.untrained_heldout_loss):.1f} |

## Samples

Greedy continuation of `{SAMPLE_PROMPT}` (at most 200 new bytes):

{fence}python
{r.greedy_sample}
{fence}

Temperature 0.8, seed 0 (`torch.Generator().manual_seed(0)`, full distribution), at most 200 new bytes:

{fence}python
{r.sample}
{fence}
"""


def parse_args(argv: list[str] | None = None) -> Options:
    d, flag = Options(), training.flag
    p = training.argument_parser(
        __doc__, out=flag(d.out, "output folder (default: models/charlstm/)"), steps=d.steps, seed=d.seed,
        threads=d.threads, n_layer=d.n_layer, hidden=d.hidden, n_embd=d.n_embd, seq_len=d.seq_len,
        batch_size=d.batch_size, lr=d.lr, warmup=flag(None, "warmup steps (default: min(50, steps // 10))", int),
        max_files=flag(None, "use only the first N training files (smoke runs)", int),
        eval_chars=flag(d.eval_chars, "evaluate on the first N held-out bytes (0: all)"), log_every=d.log_every)
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps must be >= 1")
    warmup = a.warmup if a.warmup is not None else max(1, min(d.warmup, a.steps // 10))
    return Options(out=a.out, steps=a.steps, seed=a.seed, threads=a.threads, n_layer=a.n_layer, hidden=a.hidden,
                   n_embd=a.n_embd, seq_len=a.seq_len, batch_size=a.batch_size, lr=a.lr, warmup=warmup,
                   max_files=a.max_files, eval_chars=a.eval_chars or None, log_every=a.log_every)


def main(argv: list[str] | None = None) -> Result:
    return train(parse_args(argv), log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
    main()
