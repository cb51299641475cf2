"""Text-to-text decode speed and peak memory: edgegen's seq2seq runtime against transformers eager and Optimum's
``ORTModelForSeq2SeqLM``, on the same random-weight encoder-decoders, in one run.

    python benchmarks/seq2seq.py                  # T5-small and BART-base shapes, 64 new tokens, 5 repeats
    python benchmarks/seq2seq.py --quick          # 2-layer T5 and BART (d_model 128), 2 repeats: checks the script
    python benchmarks/seq2seq.py --workdir /tmp/s2s-bench    # keep the HF directories and conversions between runs
    python benchmarks/seq2seq.py --threads 1      # one intra-op thread everywhere (a busy machine: torch's spinning
                                                  # threads slow down 50x when another process holds a core)

Models: a T5-small-shaped ``T5ForConditionalGeneration`` (d_model 512, 6+6 layers, 8 heads, d_ff 2048, vocab
32128, 60M parameters) and a BART-base-shaped ``BartForConditionalGeneration`` (d_model 768, 6+6 layers, 12 heads,
ffn 3072, vocab 50265, 140M), random weights (transformers' init, times 3 for the T5s and the tiny BART as
tests/seq2seq_support.py does: sharper logits; BART-base stays at 1, where 2 or 3 make greedy decoding repeat one
token) with the LM head untied from the embeddings (+16M / +39M parameters: with the real models' tied head,
greedy decoding repeats one token, pad or EOS, and agreeing token ids would prove nothing), each with a WordLevel
tokenizer of the full vocabulary ("w0".."wN"; the words carry no meaning, the embedding and LM-head sizes are the
real ones).  edgegen converts each directory at fp32 (``quantize="none"``) and at int8; the int8 conversion has a
logit-error gate that may refuse a random model: the refusal and its reason are printed instead of a row.
Optimum exports the same directory once (``from_pretrained(dir, export=True)``: encoder, decoder and
decoder-with-past, use_cache=True).

Every contender reads the same 32-token prompt and generates exactly ``--new-tokens`` greedy tokens at batch 1
with end-of-sequence ignored on all sides (edgegen ``ignore_eos=True``; transformers and Optimum a generation
config without ``eos_token_id`` / ``forced_eos_token_id``, which is the same rule: an EOS token may be generated
and decoding goes on, so the token ids can be compared; ``min_new_tokens`` would instead mask EOS, a different
sequence).  Each measurement is a fresh subprocess (load, one warm-up generation, one timed generation), the
contenders interleaved ``--repeats`` times; peak RSS is that process's VmHWM after the run (Linux; ``ru_maxrss``
elsewhere; it counts the libraries each contender imports: torch for transformers and Optimum, not for edgegen).
Time to first token is from the call to the first generated token (encoder + first decoder step); decode tokens/s
counts the tokens after the first over the time after the first (edgegen: a timer on the first decoder graph's
return; transformers and Optimum: a streamer's timestamps).  ``--threads N`` sets every contender's intra-op threads
(torch.set_num_threads, ONNX Runtime's intra_op_num_threads), default: each library's own (all cores).
Medians are printed with the spread (min..max) because shared machines are noisy; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "t5-small": dict(kind="t5", d_model=512, d_kv=64, d_ff=2048, layers=6, heads=8, vocab=32128, scale=3.0),
    "bart-base": dict(kind="bart", d_model=768, d_ff=3072, layers=6, heads=12, vocab=50265, scale=1.0),
    "t5-tiny": dict(kind="t5", d_model=128, d_kv=32, d_ff=256, layers=2, heads=4, vocab=2000, scale=3.0),
    "bart-tiny": dict(kind="bart", d_model=128, d_ff=256, layers=2, heads=4, vocab=2000, scale=3.0),
}
PROMPT_WORDS = 31    # + the end-of-sequence token (T5) or <s> ... </s> (BART): 32 / 33 tokens
CONTENDERS = ("edgegen-fp32", "edgegen-int8", "transformers", "optimum")


# -- building and converting (the parent process; imports torch) ------------------------------------------------
def build_hf(dest: Path, name: str) -> Path:
    """A random-weight HF directory of shape ``name`` with a WordLevel fast tokenizer of the full vocabulary."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    s = SHAPES[name]
    torch.manual_seed(0)
    if s["kind"] == "t5":
        specials, template, marks = ["<pad>", "</s>", "<unk>"], "$A </s>", {"</s>": 1}
        names = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        config = tf.T5Config(vocab_size=s["vocab"], d_model=s["d_model"], d_kv=s["d_kv"], d_ff=s["d_ff"],
                             num_layers=s["layers"], num_decoder_layers=s["layers"], num_heads=s["heads"],
                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
        model = tf.T5ForConditionalGeneration(config)
    else:
        specials, template, marks = ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", {"<s>": 0, "</s>": 2}
        names = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        config = tf.BartConfig(vocab_size=s["vocab"], d_model=s["d_model"], encoder_layers=s["layers"],
                               decoder_layers=s["layers"], encoder_attention_heads=s["heads"],
                               decoder_attention_heads=s["heads"], encoder_ffn_dim=s["d_ff"],
                               decoder_ffn_dim=s["d_ff"], max_position_embeddings=1024, bos_token_id=0,
                               pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
                               tie_word_embeddings=False)
        model = tf.BartForConditionalGeneration(config)
    with torch.no_grad():   # scale 3: sharper logits (as tests/seq2seq_support.py), fewer near-ties
        for p in model.parameters():
            p.mul_(s["scale"])
        if s["kind"] == "bart":   # untied BART reloads its stacks' embeddings as fresh random ones unless saved apart
            for stack in (model.model.encoder, model.model.decoder):
                stack.embed_tokens.weight = torch.nn.Parameter(model.model.shared.weight.detach().clone())
    vocab = {t: i for i, t in enumerate(specials)}
    for i in range(s["vocab"] - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=list(marks.items()))
    model.eval().save_pretrained(dest)
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(dest)
    return dest


def prepare(root: Path, name: str) -> dict[str, Path | str]:
    """HF directory, edgegen fp32 / int8 artifacts and the Optimum export of ``name`` under ``root`` (reused when
    present); an int8 refusal is returned as its message under "edgegen-int8"."""
    import edgegen
    from edgegen.errors import EdgegenError

    hf = root / f"{name}-hf"
    if not (hf / "tokenizer.json").is_file():
        print(f"building a random {name} in {hf}", flush=True)
        build_hf(hf, name)
    paths: dict[str, Path | str] = {"hf": hf, "transformers": hf}
    for label, quantize in (("edgegen-fp32", "none"), ("edgegen-int8", "int8")):
        out, refused = root / f"{name}-{label}", root / f"{name}-{label}.refused"
        if refused.is_file():
            paths[label] = refused.read_text()
        elif not (out / "edgegen.json").is_file():
            print(f"converting {name} with edgegen (quantize={quantize})", flush=True)
            try:
                t0 = time.perf_counter()
                edgegen.convert(hf, out, quantize=quantize)
                print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
                paths[label] = out
            except EdgegenError as exc:
                refused.write_text(str(exc).splitlines()[0])
                paths[label] = refused.read_text()
        else:
            paths[label] = out
    ort = root / f"{name}-optimum"
    if not (ort / "config.json").is_file():
        print(f"exporting {name} with Optimum", flush=True)
        from optimum.onnxruntime import ORTModelForSeq2SeqLM

        ORTModelForSeq2SeqLM.from_pretrained(hf, export=True, use_cache=True).save_pretrained(ort)
    paths["optimum"] = ort
    return paths


def prompt_ids(hf: Path, name: str) -> list[int]:
    """The prompt's token ids (the same words for every shape)."""
    from tokenizers import Tokenizer

    words = " ".join(f"w{(7 * i + 3) % (SHAPES[name]['vocab'] // 2)}" for i in range(PROMPT_WORDS))
    return Tokenizer.from_file(str(hf / "tokenizer.json")).encode(words).ids


# -- one measurement (a child process) --------------------------------------------------------------------------
class _Timed:
    """An ONNX Runtime session that records when each ``run`` returns (edgegen's first-token time)."""

    def __init__(self, session, marks: list[float]) -> None:   # noqa: ANN001
        self._session, self._marks = session, marks

    def run(self, *args, **kwargs):   # noqa: ANN002, ANN003, ANN201
        out = self._session.run(*args, **kwargs)
        self._marks.append(time.perf_counter())
        return out

    def __getattr__(self, name: str):   # noqa: ANN204
        return getattr(self._session, name)


def run_edgegen(path: Path, ids: list[int], new: int, threads: int | None) -> tuple[list[int], float, float]:
    """(tokens, seconds to the first token, seconds after it) of one edgegen generation."""
    import edgegen
    from edgegen import GenerationSettings

    model = edgegen.load(path, provider="cpu", threads=threads)
    marks: list[float] = []
    model.sessions["decoder"] = _Timed(model.sessions["decoder"], marks)
    settings = GenerationSettings(max_new_tokens=new, temperature=0, ignore_eos=True)

    def once() -> tuple[list[int], float, float]:
        marks.clear()
        t0 = time.perf_counter()
        tokens = model.generate_ids(ids, settings, num_beams=1)
        t1 = time.perf_counter()
        return tokens, marks[0] - t0, t1 - marks[0]

    once()   # warm-up
    result = once()
    assert "torch" not in sys.modules, "the edgegen runtime imported torch"
    return result


def run_hf(path: Path, ids: list[int], new: int, optimum: bool,
           threads: int | None) -> tuple[list[int], float, float]:
    """The same for transformers eager (``optimum`` False) or Optimum's ORTModelForSeq2SeqLM: a streamer's
    timestamps (its first ``put`` is the decoder start token, then one per generated token)."""
    import torch

    if optimum:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForSeq2SeqLM

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        model = ORTModelForSeq2SeqLM.from_pretrained(path, use_cache=True, session_options=options,
                                                     provider="CPUExecutionProvider")
    else:
        from transformers import AutoModelForSeq2SeqLM

        if threads:
            torch.set_num_threads(threads)

        model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    config = model.generation_config   # edited in place: a passed config's None fields fall back to the model's
    config.update(max_new_tokens=new, min_new_tokens=None, do_sample=False, num_beams=1, use_cache=True,
                  eos_token_id=None, forced_eos_token_id=None, forced_bos_token_id=None)
    input_ids = torch.tensor([ids])

    class Clock:
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, _value) -> None:   # noqa: ANN001
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def once() -> tuple[list[int], float, float]:
        clock = Clock()
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 generation_config=config, streamer=clock)
        return out[0, 1:].tolist(), clock.times[1] - t0, clock.times[-1] - clock.times[1]

    once()   # warm-up
    return once()


def child(contender: str, path: Path, ids: list[int], new: int, threads: int | None) -> None:
    """Print one measurement as a JSON line."""
    import warnings

    warnings.simplefilter("ignore")
    if contender.startswith("edgegen"):
        tokens, first, after = run_edgegen(path, ids, new, threads)
    else:
        tokens, first, after = run_hf(path, ids, new, contender == "optimum", threads)
    print(json.dumps({"tokens": tokens, "ttft": first, "decode": (len(tokens) - 1) / after,
                      "rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (Linux; reset at exec, unlike ru_maxrss, which keeps the forking parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def measure(contender: str, path: Path, ids: list[int], new: int, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", contender, str(path), json.dumps(ids), str(new), str(threads or 0)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{contender} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the table ---------------------------------------------------------------------------------------------------
def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}..{format(max(values), fmt)})"


def agreement(tokens: list[int], reference: list[int]) -> str:
    if tokens == reference:
        return "same"
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
    return f"differs at {first}"


def bench(name: str, paths: dict, new: int, repeats: int, threads: int | None) -> None:
    ids = prompt_ids(paths["hf"], name)
    runners = [c for c in CONTENDERS if isinstance(paths[c], Path)]
    results: dict[str, list[dict]] = {c: [] for c in runners}
    for _ in range(repeats):   # interleaved: each repeat runs every contender once, in a fresh process
        for c in runners:
            results[c].append(measure(c, paths[c], ids, new, threads))
    reference, ort = results["transformers"][-1]["tokens"], results["optimum"][-1]["tokens"]
    print(f"\n{name}: prompt {len(ids)} tokens, {new} new tokens, batch 1, greedy, EOS ignored; "
          f"{repeats} interleaved repeats, threads {threads or 'default'}; medians (min..max)")
    print(f"{'contender':<14} {'decode tok/s':>24} {'first token ms':>22} {'peak RSS MiB':>20} "
          f"{'tokens':>6} {'distinct':>8}  ids vs transformers / vs optimum")
    for c in runners:
        r = results[c]
        print(f"{c:<14} {spread([x['decode'] for x in r], '.1f'):>24} "
              f"{spread([1000 * x['ttft'] for x in r], '.1f'):>22} {spread([x['rss_mb'] for x in r], '.0f'):>20} "
              f"{len(r[-1]['tokens']):>6} {len(set(r[-1]['tokens'])):>8}  "
              f"{agreement(r[-1]['tokens'], reference)} / {agreement(r[-1]['tokens'], ort)}"
              + ("" if all(x["tokens"] == r[-1]["tokens"] for x in r) else " (varied between repeats)"))
    for c in CONTENDERS:
        if not isinstance(paths[c], Path):
            print(f"{c:<14} refused by the converter: {paths[c]}")
    opt = statistics.median(x["decode"] for x in results["optimum"])
    ratios = ", ".join(f"{c} x{statistics.median(x['decode'] for x in results[c]) / opt:.2f}"
                       for c in runners if c.startswith("edgegen"))
    print(f"decode tok/s / Optimum's: {ratios}   (issue 22's target: >= 1.3)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]) or None)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2-layer d_model-128 models and 2 repeats.")
    parser.add_argument("--repeats", type=int, default=None, help="Interleaved repeats (default 5, --quick 2).")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--models", default=None, help="Comma-separated shapes (default t5-small,bart-base; "
                                                      "--quick t5-tiny,bart-tiny).")
    parser.add_argument("--threads", type=int, default=None,
                        help="Intra-op threads of every contender (torch, ONNX Runtime); default: each library's own.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep models here (default: a temp dir).")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    names = (args.models or ("t5-tiny,bart-tiny" if args.quick else "t5-small,bart-base")).split(",")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="seq2seq-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        bench(name, prepare(root, name), args.new_tokens, repeats, args.threads)


if __name__ == "__main__":
    main()
