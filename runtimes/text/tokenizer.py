"""An artifact's ``tokenizer.json``, loaded as hostile input: every failure of the tokenizers library is one
ManifestError naming the file, and the tokenizer's ids must fit the graph that reads them.  No torch here.

The tokenizers library fails in two ways: an ``Exception`` (``{}`` gives "Model missing"), or a Rust panic,
which pyo3 raises as ``pyo3_runtime.PanicException``: a ``BaseException``, not an ``Exception``, so an
``except Exception`` lets it through as a traceback.  A pre-tokenizer regex that backtracks without end
panics that way on the text that sets it off (Oniguruma's "retry-limit-in-match over").
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import tokenizers

from edgegen.errors import ManifestError
from edgegen.strict import short

__all__ = ["check_vocabulary", "is_panic", "load_tokenizer", "logits_vocab", "tokenizer_call", "vocab_bound"]

R = TypeVar("R")

#: Encoded and decoded once at load.  Ordinary text, then long runs of one character ended by another: the
#: input on which a catastrophically backtracking regex gives up (a panic), so such a tokenizer fails at load.
PROBE = "Hello, world!  def f(x):\n    return x + 1  # 123 é 日本 🙂\n" + \
    "".join(c * 64 + "!" for c in ("a", "A", "1", " ", "_", "\n", "é"))
_STDERR_LOCK = threading.Lock()


def is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic raised through pyo3 (its class cannot be imported by name)."""
    return type(exc).__name__ == "PanicException" and type(exc).__module__ == "pyo3_runtime"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return short(text[0])[1:-1] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to the null device: a Rust panic prints its message (and a backtrace) there before
    pyo3 raises it, and the error raised instead says it in one line.  Used only at load (a few ms), under a
    lock, so two loads in two threads cannot leave the descriptor pointing at the null device."""
    with _STDERR_LOCK:
        saved = None
        try:
            if sys.stderr is not None:
                sys.stderr.flush()   # what Python has buffered still goes where it was meant to
            saved = os.dup(2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        except (OSError, ValueError):  # no descriptor 2 (a closed stderr, an embedded interpreter): leave it
            pass
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)


def load_tokenizer(artifact: Any, role: str = "tokenizer") -> tokenizers.Tokenizer:
    """The artifact's tokenizer, read and tried on :data:`PROBE`; a ManifestError naming the file if the
    tokenizers library refuses it, or panics on it."""
    file = artifact.manifest.assets[role].file
    try:
        with _quiet_stderr():
            tokenizer = tokenizers.Tokenizer.from_file(str(artifact.path(file)))
            tokenizer.decode(tokenizer.encode(PROBE).ids)
    except Exception as exc:  # a JSON or schema error of the file, a regex Oniguruma refuses...
        raise ManifestError(f"{artifact.root}: {file} is not a tokenizer tokenizers {tokenizers.__version__} can "
                            f"read ({_first_line(exc)}); the artifact is corrupt, re-convert the model") from None
    except BaseException as exc:
        if not is_panic(exc):  # KeyboardInterrupt, SystemExit...
            raise
        raise ManifestError(f"{artifact.root}: {file} crashes the tokenizers library on a test text "
                            f"({_first_line(exc)}; e.g. a pre-tokenizer regex that backtracks without end); "
                            "re-convert the model") from None
    return tokenizer


def tokenizer_call(call: Callable[..., R], *args: Any) -> R:
    """``call(*args)`` on a tokenizer, a panic of the tokenizers library turned into a ManifestError."""
    try:
        return call(*args)
    except BaseException as exc:
        if not is_panic(exc):
            raise
        raise ManifestError(f"the artifact's tokenizer crashes the tokenizers library on this text "
                            f"({_first_line(exc)}; e.g. a pre-tokenizer regex that backtracks without end); "
                            "re-convert the model") from None


def vocab_bound(tokenizer: tokenizers.Tokenizer) -> int:
    """1 + the largest id the tokenizer can produce (its added tokens included; ids may have gaps)."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1


def logits_vocab(artifact: Any, graph: str) -> int | None:
    """The vocabulary size of ``graph``'s ``logits`` output where the manifest declares it fixed."""
    spec = artifact.manifest.graphs[graph].tensor("logits")
    last = spec.shape[-1] if spec is not None and spec.shape else None
    return last if isinstance(last, int) else None


def check_vocabulary(artifact: Any, tokenizer: tokenizers.Tokenizer, graph: str,
                     token_ids: Mapping[str, Sequence[int]]) -> None:
    """At load, before any session opens: every id the tokenizer can produce is a row of the graph's logits
    (else the embedding lookup fails mid-generation), and so is every id the sampler section names."""
    problems = []
    bound, graph_vocab = vocab_bound(tokenizer), logits_vocab(artifact, graph)
    file = artifact.manifest.assets["tokenizer"].file
    if graph_vocab is not None and bound > graph_vocab:
        problems.append(f"{file} has ids up to {bound - 1:,} but the {graph!r} graph's logits have "
                        f"{graph_vocab:,} entries (ids 0..{graph_vocab - 1:,})")
    limit, what = (graph_vocab, f"the {graph!r} graph's {graph_vocab:,} logits") if graph_vocab is not None \
        else (bound, f"the {bound:,} ids of {file}")
    for key, ids in token_ids.items():
        bad = [i for i in ids if i >= limit]
        if bad:
            problems.append(f"edgegen.json.sampler.{key}: {bad[0]:,} is beyond {what}")
    if problems:
        raise ManifestError(f"{artifact.root}: " + "; ".join(problems) + "; re-convert the model")
