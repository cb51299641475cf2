"""Train edgegen's bundled VITS voice on spoken digits that espeak-ng says (16 kHz).

    python models/train_speech.py                                    # the bundled voice, into models/speech/
    python models/train_speech.py --steps 30 --out /tmp/voice        # a smoke run

Data (made here, deterministic): every digit word alone, every ordered pair ("seven two") and a fixed sample of
triples ("nine four one"), each spoken by espeak-ng in several voices, speeds and pitches (SETTINGS), resampled
from 22,050 Hz to 16 kHz, silence trimmed, peak-normalised.  The held-out triples (HELDOUT, none in training)
are spoken once with the reference setting and written to <out>/heldout/ for models/speech_eval.py.

Model: a small transformers ``VitsModel`` (``voice_config``) with the stochastic duration predictor (edgegen's
converter does not export the deterministic one: see the card) and a
character ``VitsTokenizer`` (phonemize=False, blanks between characters).  Objective, VITS (Kim et al. 2021)
without the discriminator:

1. posterior encoder on the linear spectrogram [B, 257, F] -> z ~ q(z | x) [B, C, F];
2. flow(z) -> z_p (mean-only couplings: log-determinant 0);
3. monotonic alignment search (numpy, :func:`monotonic_alignment`) of z_p's frames onto the text prior's tokens
   under N(z_p; mu_p, sigma_p) (transformers' ``prior_log_variances`` is log sigma), then the KL term
   log sigma_p - log sigma_q - 1/2 + (z_p - mu_p)^2 / (2 sigma_p^2) (eq. 6 of the paper, one sample);
4. decoder(z segment of SEGMENT frames) -> waveform, multi-resolution log-mel and log-STFT-magnitude L1 against
   the real segment (weight 45, as the paper's mel loss);
5. the stochastic duration predictor's variational negative log-likelihood (eq. 12 of the paper) of the
   alignment's frame counts, by :func:`duration_nll` over the predictor's own modules in the original VITS flow
   order: the order its inference path inverts (transformers' ``VitsStochasticDurationPredictor.forward`` runs
   the training direction in another order, and a predictor trained through it says every token ~800 frames
   long).
Adam with linear warmup and cosine decay, gradient clipping, fixed seeds and threads.  Writes the
save_pretrained VitsModel + VitsTokenizer, heldout/ and MODEL_CARD.md into --out.  Loadable by path.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch

if "training" not in sys.modules:  # models/ is not a package: the scripts' shared helper, loaded by path
    _spec = importlib.util.spec_from_file_location("training", Path(__file__).with_name("training.py"))
    _spec.loader.exec_module(sys.modules.setdefault("training", importlib.util.module_from_spec(_spec)))
training = sys.modules["training"]
speech_eval = training.sibling("speech_eval")

RATE, HOP, N_FFT = 16000, 256, 512          # the voice's rate, frame hop (prod of upsample_rates), spectrogram FFT
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SYMBOLS = ["_", " ", "'", "-", *"abcdefghijklmnopqrstuvwxyz"]   # "_": pad and blank (id 0)
#: espeak-ng (voice, words per minute, pitch 0-99); the first is the reference setting of the held-out audio
SETTINGS = [("en-us", 160, 50), ("en-us", 140, 40), ("en-us", 180, 60), ("en-us", 150, 65), ("en", 160, 45),
            ("en-gb-x-rp", 150, 50), ("en-029", 165, 55), ("en-us-nyc", 155, 50)]
#: held-out triples (no training text contains them)
HELDOUT = ["nine four one", "three zero eight", "six two five", "one seven seven", "eight three two",
           "four six zero"]
TRIPLES = 240                               # triples sampled for training (of the 994 not held out)
SEGMENT = 16                                # latent frames the decoder trains on per utterance (0.26 s)
RESOLUTIONS = ((1024, 256, 80), (512, 128, 64), (256, 64, 32))   # (n_fft, hop, mel bands) of the decoder loss


# -- data ------------------------------------------------------------------------------------
def texts() -> list[str]:
    """The training texts: the ten words, the hundred pairs and TRIPLES triples (fixed seed), none held out."""
    triples = [" ".join(t) for t in itertools.product(WORDS, repeat=3) if " ".join(t) not in HELDOUT]
    picked = np.random.default_rng(0).choice(len(triples), TRIPLES, replace=False)
    return WORDS + [f"{a} {b}" for a in WORDS for b in WORDS] + [triples[i] for i in sorted(picked)]


def espeak(text: str, voice: str, speed: int, pitch: int, tmp: Path) -> np.ndarray:
    """espeak-ng's waveform [n] float32 for ``text``, at RATE, leading/trailing silence trimmed, peak 0.9."""
    from scipy.signal import resample_poly

    path = tmp / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)
    with wave.open(str(path), "rb") as f:
        rate, data = f.getframerate(), np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    x = resample_poly(data.astype(np.float64) / 32768.0, RATE, rate)          # [n] at RATE
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    margin = RATE // 40                                                        # 25 ms either side
    x = x[max(0, loud[0] - margin): loud[-1] + margin]
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def make_data(tmp: Path) -> list[tuple[str, np.ndarray]]:
    """(text, waveform) for every training text in every setting."""
    return [(text, espeak(text, *setting, tmp)) for text in texts() for setting in SETTINGS]


def write_heldout(out: Path, tmp: Path) -> None:
    """The held-out texts in the reference setting, as 16-bit WAVs plus heldout.json, into ``out``/heldout/."""
    from edgegen.runtimes.audio.wav import write_wav

    folder = out / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    voice, speed, pitch = SETTINGS[0]
    items = []
    for i, text in enumerate(HELDOUT):
        write_wav(folder / f"heldout_{i}.wav", espeak(text, voice, speed, pitch, tmp), RATE)
        items.append({"text": text, "file": f"heldout_{i}.wav"})
    setting = f"espeak-ng -v {voice} -s {speed} -p {pitch}, resampled to {RATE} Hz, trimmed, peak 0.9"
    (folder / "heldout.json").write_text(json.dumps({"setting": setting, "utterances": items}, indent=1) + "\n")


def linear_spectrogram(x: torch.Tensor) -> torch.Tensor:
    """VITS's posterior input: STFT magnitudes [B, N_FFT // 2 + 1, n // HOP] of waveforms x [B, n]."""
    pad = (N_FFT - HOP) // 2
    x = torch.nn.functional.pad(x[:, None], (pad, pad), mode="reflect")[:, 0]
    spec = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), center=False, return_complex=True)
    return torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-6)


# -- model -----------------------------------------------------------------------------------
def voice_config(args: argparse.Namespace):
    from transformers import VitsConfig

    return VitsConfig(vocab_size=len(SYMBOLS), hidden_size=args.hidden, num_hidden_layers=3, num_attention_heads=2,
                      ffn_dim=3 * args.hidden, flow_size=args.flow, spectrogram_bins=N_FFT // 2 + 1,
                      sampling_rate=RATE, upsample_initial_channel=args.vocoder, upsample_rates=[8, 8, 4],
                      upsample_kernel_sizes=[16, 16, 8], resblock_kernel_sizes=[3, 7],
                      resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], prior_encoder_num_flows=4,
                      prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=4,
                      wavenet_kernel_size=5, duration_predictor_filter_channels=args.hidden,
                      use_stochastic_duration_prediction=True, num_speakers=1, speaker_embedding_size=0,
                      pad_token_id=0)


def build_model(config, seed: int):
    """A VitsModel at its initial weights for ``seed`` (the untrained twin is rebuilt this way)."""
    from transformers import VitsModel

    torch.manual_seed(seed)
    return VitsModel(config)


def save_tokenizer(out: Path) -> None:
    from transformers import VitsTokenizer

    vocab = out / "vocab.json"
    vocab.write_text(json.dumps({s: i for i, s in enumerate(SYMBOLS)}), encoding="utf-8")
    VitsTokenizer(str(vocab), pad_token="_", unk_token="<unk>", phonemize=False, normalize=True, add_blank=True,
                  language="eng").save_pretrained(out)


# -- objective -------------------------------------------------------------------------------
def monotonic_alignment(log_likelihood: np.ndarray, tokens: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """VITS's monotonic alignment search: the 0/1 path [B, T, F] through log_likelihood [B, T, F] (token t,
    frame f) that starts at (0, 0), ends at (tokens - 1, frames - 1), each frame one token, each token >= 1
    frame, maximising the summed log-likelihood."""
    b, t, f = log_likelihood.shape
    best = np.full((b, t, f), -np.inf)
    best[:, 0, 0] = log_likelihood[:, 0, 0]
    for j in range(1, f):                                  # Q[t, j] = v[t, j] + max(Q[t, j-1], Q[t-1, j-1])
        stay = best[:, :, j - 1]
        advance = np.concatenate([np.full((b, 1), -np.inf), best[:, :-1, j - 1]], 1)
        best[:, :, j] = log_likelihood[:, :, j] + np.maximum(stay, advance)
    path = np.zeros((b, t, f), dtype=np.float32)
    for i in range(b):                                    # backtrack from the last token's last frame
        k = tokens[i] - 1
        for j in range(frames[i] - 1, -1, -1):
            path[i, k, j] = 1.0
            if k > 0 and (k == j or best[i, k - 1, j - 1] > best[i, k, j - 1]):
                k -= 1
    return path


def prior_log_likelihood(z_p: torch.Tensor, means: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log N(z_p[:, :, f]; means[:, :, t], sigma[:, :, t]) summed over channels: [B, T, F] (z_p [B, C, F],
    means / log_sigma [B, C, T])."""
    inv_var = torch.exp(-2 * log_sigma)                                                 # [B, C, T]
    const = torch.sum(-0.5 * math.log(2 * math.pi) - log_sigma, 1)[:, :, None]          # [B, T, 1]
    quad = torch.einsum("bcf,bct->btf", -0.5 * z_p ** 2, inv_var)                      # [B, T, F]
    cross = torch.einsum("bcf,bct->btf", z_p, means * inv_var)
    return const + quad + cross + torch.sum(-0.5 * means ** 2 * inv_var, 1)[:, :, None]


class SpectralLoss(torch.nn.Module):
    """Mean over RESOLUTIONS of L1 log-mel plus L1 log-magnitude distances between waveforms [B, n]."""

    def __init__(self) -> None:
        super().__init__()
        for i, (n_fft, _, mels) in enumerate(RESOLUTIONS):
            self.register_buffer(f"mel{i}", torch.from_numpy(speech_eval.mel_filterbank(RATE, n_fft, mels)))
            self.register_buffer(f"win{i}", torch.hann_window(n_fft))

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        total = fake.new_zeros(())
        for i, (n_fft, hop, _) in enumerate(RESOLUTIONS):
            mags = [torch.stft(x, n_fft, hop, window=getattr(self, f"win{i}"), return_complex=True).abs()
                    for x in (fake, real)]                                               # [B, bins, frames]
            logs = [torch.log(torch.clamp(m, min=1e-5)) for m in mags]
            mels = [torch.log(torch.clamp(getattr(self, f"mel{i}") @ m ** 2, min=1e-5)) for m in mags]
            total = total + (logs[0] - logs[1]).abs().mean() + (mels[0] - mels[1]).abs().mean()
        return total / len(RESOLUTIONS)


def duration_nll(dp, hidden: torch.Tensor, mask: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """The stochastic duration predictor's variational NLL [B] of frame counts durations [B, 1, T] (hidden
    [B, H, T], mask [B, 1, T]): transformers' ``VitsStochasticDurationPredictor.forward`` with the main flows
    in the original VITS order (affine, then each coupling followed by a flip).  transformers' own forward flips
    after the affine too, which its reverse (inference) path does not undo: trained through it, the voice asks
    for ~800 frames per token."""
    x = dp.conv_proj(dp.conv_dds(dp.conv_pre(hidden.detach()), mask)) * mask            # [B, H', T]
    h = dp.post_conv_proj(dp.post_conv_dds(dp.post_conv_pre(durations), mask)) * mask
    noise = torch.randn(durations.size(0), 2, durations.size(2)) * mask                 # [B, 2, T]
    q, logdet_q = noise, 0
    for flow in dp.post_flows:                     # any invertible order is a valid posterior: transformers'
        q, logdet = flow(q, mask, global_conditioning=x + h)
        q, logdet_q = torch.flip(q, [1]), logdet_q + logdet
    u, nu = torch.split(q, [1, 1], dim=1)
    logdet_q = logdet_q + torch.sum((torch.nn.functional.logsigmoid(u) + torch.nn.functional.logsigmoid(-u)) * mask,
                                    [1, 2])
    logq = torch.sum(-0.5 * (math.log(2 * math.pi) + noise ** 2) * mask, [1, 2]) - logdet_q
    log_d = torch.log(torch.clamp_min((durations - torch.sigmoid(u)) * mask, 1e-5)) * mask
    z, logdet_p = dp.flows[0](torch.cat([log_d, nu], 1), mask, global_conditioning=x)   # the affine: no flip
    logdet_p = logdet_p + torch.sum(-log_d, [1, 2])
    for flow in dp.flows[1:]:
        z, logdet = flow(z, mask, global_conditioning=x)
        z, logdet_p = torch.flip(z, [1]), logdet_p + logdet
    nll = torch.sum(0.5 * (math.log(2 * math.pi) + z ** 2) * mask, [1, 2]) - logdet_p
    return nll + logq


def batch_of(data: list[dict], picks: list[int]) -> dict[str, torch.Tensor]:
    """Padded tensors of the utterances ``picks``: ids [B, T], token mask [B, T], wave [B, F * HOP],
    spectrogram [B, bins, F], frame mask [B, 1, F], tokens [B], frames [B]."""
    items = [data[i] for i in picks]
    t, f = max(len(x["ids"]) for x in items), max(x["spec"].shape[1] for x in items)
    ids = torch.zeros((len(items), t), dtype=torch.long)
    wave = torch.zeros((len(items), f * HOP))
    spec = torch.zeros((len(items), items[0]["spec"].shape[0], f))
    for i, x in enumerate(items):
        ids[i, :len(x["ids"])] = torch.tensor(x["ids"])
        wave[i, :len(x["wave"])] = x["wave"]
        spec[i, :, :x["spec"].shape[1]] = x["spec"]
    tokens = torch.tensor([len(x["ids"]) for x in items])
    frames = torch.tensor([x["spec"].shape[1] for x in items])
    return {"ids": ids, "token_mask": (torch.arange(t)[None] < tokens[:, None]).long(), "wave": wave, "spec": spec,
            "frame_mask": (torch.arange(f)[None] < frames[:, None]).float()[:, None], "tokens": tokens,
            "frames": frames}


def losses(model, batch: dict[str, torch.Tensor], spectral: SpectralLoss, gen: torch.Generator) -> dict:
    """The VITS objective's terms (no discriminator) for one batch."""
    mask_t = batch["token_mask"][:, :, None].float()                                    # [B, T, 1]
    enc = model.text_encoder(input_ids=batch["ids"], padding_mask=mask_t, attention_mask=batch["token_mask"])
    hidden = enc.last_hidden_state.transpose(1, 2)                                      # [B, H, T]
    m_p, logs_p = enc.prior_means.transpose(1, 2), enc.prior_log_variances.transpose(1, 2)   # [B, C, T]
    y_mask = batch["frame_mask"]                                                        # [B, 1, F]
    z, m_q, logs_q = model.posterior_encoder(batch["spec"], y_mask)                     # [B, C, F] each
    z_p = model.flow(z, y_mask)                                                         # [B, C, F]

    with torch.no_grad():   # 3. the alignment [B, T, F], tokens and frames outside the masks excluded
        ll = prior_log_likelihood(z_p, m_p, logs_p)
        ll = ll.masked_fill((mask_t * y_mask) == 0, -1e30).double().numpy()
        attn = torch.from_numpy(monotonic_alignment(ll, batch["tokens"].numpy(), batch["frames"].numpy()))
    m_f, logs_f = m_p @ attn, logs_p @ attn                                             # [B, C, F]
    kl = logs_f - logs_q - 0.5 + 0.5 * (z_p - m_f) ** 2 * torch.exp(-2 * logs_f)
    kl = torch.sum(kl * y_mask) / torch.sum(y_mask)

    durations = attn.sum(2)[:, None]                                                    # [B, 1, T] frames per token
    nll = duration_nll(model.duration_predictor, hidden, mask_t.transpose(1, 2), durations)  # [B]
    duration = torch.sum(nll) / torch.sum(mask_t)

    # 4. a random SEGMENT-frame window of each utterance through the vocoder (padded when the batch is shorter)
    short = max(0, SEGMENT - z.shape[2])
    z, wave = torch.nn.functional.pad(z, (0, short)), torch.nn.functional.pad(batch["wave"], (0, short * HOP))
    starts = [int(torch.randint(0, max(1, int(n) - SEGMENT + 1), (1,), generator=gen)) for n in batch["frames"]]
    z_seg = torch.stack([z[i, :, s:s + SEGMENT] for i, s in enumerate(starts)])        # [B, C, SEGMENT]
    real = torch.stack([wave[i, s * HOP:(s + SEGMENT) * HOP] for i, s in enumerate(starts)])
    fake = model.decoder(z_seg)[:, 0]                                                   # [B, SEGMENT * HOP]
    return {"spectral": spectral(fake, real), "kl": kl, "duration": duration}


def tie_unseen(model, data: list[dict]) -> list[str]:
    """Give the characters no training text holds the space's embedding (untrained, their random embeddings make
    the duration predictor ask for minutes of audio); returns those characters."""
    seen = {i for x in data for i in x["ids"]}
    unseen = [i for i in range(len(SYMBOLS)) if i not in seen]
    with torch.no_grad():
        table = model.text_encoder.embed_tokens.weight                                  # [vocab, hidden]
        table[unseen] = table[SYMBOLS.index(" ")].clone()
    return [SYMBOLS[i] for i in unseen]


# -- the run ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = training.argument_parser(__doc__, out=speech_eval.DEFAULT_DIR, steps=2400, batch_size=8, lr=1e-3,
                                      warmup=200, hidden=64, flow=32, vocoder=96,
                                      mel_weight=training.flag(45.0, "weight of the spectral loss"),
                                      seed=0, threads=1)
    return training.parse_command_line(parser, argv, __file__)


def prepare(args: argparse.Namespace, tmp: Path) -> list[dict]:
    from transformers import VitsTokenizer

    save_tokenizer(args.out)
    tokenizer = VitsTokenizer.from_pretrained(args.out)
    data = []
    for text, x in make_data(tmp):
        x = torch.from_numpy(x[: len(x) // HOP * HOP])
        ids = tokenizer(text).input_ids
        if len(ids) > len(x) // HOP:   # the alignment gives each token a frame at least
            raise RuntimeError(f"espeak-ng spoke {text!r} in fewer frames than it has tokens")
        data.append({"text": text, "ids": ids, "wave": x,
                     "spec": linear_spectrogram(x[None])[0]})
    write_heldout(args.out, tmp)
    return data


def train(model, data: list[dict], args: argparse.Namespace, started: float) -> list[dict]:
    spectral = SpectralLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)

    def schedule(step: int) -> float:   # linear warmup, then cosine from 1 down to 0.1
        return min(1.0, (step + 1) / args.warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    for step in range(args.steps):
        model.train()
        picks = torch.randint(0, len(data), (args.batch_size,), generator=gen).tolist()
        terms = losses(model, batch_of(data, picks), spectral, gen)
        loss = args.mel_weight * terms["spectral"] + terms["kl"] + terms["duration"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
        if step % 100 == 0 or step == args.steps - 1:
            recent = {k: np.mean([h[k] for h in history[-100:]]) for k in history[-1]}
            print(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in recent.items())
                  + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    return history


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = training.start(args)
    torch.set_flush_denormal(True)   # the vocoder's convolutions slow down many-fold on denormal floats
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgegen-speech-") as tmp:
        data = prepare(args, Path(tmp))
    seconds = sum(len(x["wave"]) for x in data) / RATE
    print(f"data: {len(data)} utterances, {seconds / 60:.1f} min ({time.perf_counter() - started:.0f} s)", flush=True)
    train_started = time.perf_counter()
    model = build_model(voice_config(args), args.seed)
    history = train(model, data, args, started)
    train_s = time.perf_counter() - train_started
    print(f"unseen characters tied to the space: {''.join(tie_unseen(model, data))!r}", flush=True)
    model.eval().save_pretrained(args.out, safe_serialization=True)
    figures = speech_eval.evaluate(args.out, args.seed)
    figures.update(train_seconds=round(train_s, 1), total_seconds=round(time.perf_counter() - started, 1),
                   utterances=len(data), audio_minutes=round(seconds / 60, 1),
                   final={k: round(float(np.mean([h[k] for h in history[-100:]])), 4) for k in history[-1]})
    write_card(args, figures, model)
    print(json.dumps(figures))
    return figures


def write_card(args: argparse.Namespace, figures: dict, model) -> None:
    params = sum(p.numel() for p in model.parameters())
    used = params - sum(p.numel() for p in model.posterior_encoder.parameters())
    t, u, f = figures["trained"], figures["untrained"], figures["final"]
    settings = ", ".join(f"`-v {v} -s {s} -p {p}`" for v, s, p in SETTINGS)
    (args.out / "MODEL_CARD.md").write_text(f"""# speech: edgegen's bundled VITS voice (spoken digits)

A {params:,}-parameter transformers `VitsModel` ({used:,} of them used when speaking: the posterior encoder
only trains) with a character `VitsTokenizer` (a-z, space, `'`, `-`; phonemize=False, blanks between
characters), 16 kHz, hop {HOP}; text encoder 3 layers x {args.hidden} wide, flow {args.flow} channels
(4 couplings), HiFi-GAN from {args.vocoder} channels (upsampling 8-8-4), the stochastic duration predictor
(edgegen's tts converter fails on the deterministic one: torch.export refuses its encoder's dynamic shapes).
It says the digit words zero to nine alone and in short runs ("seven two", "nine four one"), in a blurred
average of the espeak-ng voices it heard: buzzy (no discriminator; {figures['train_seconds'] / 60:.0f} minutes on {args.threads} CPU thread{'s' * (args.threads != 1)}).  Convert
it with `edgegen convert models/speech OUT`; `edgegen demo` does.

- Data: made by `models/train_speech.py` with espeak-ng {_espeak_version()} (no downloaded data): the ten
  digit words, the 100 ordered pairs and {TRIPLES} of the triples, each in {len(SETTINGS)} settings ({settings}),
  resampled to 16 kHz, silence trimmed, peak 0.9: {figures['utterances']:,} utterances,
  {figures['audio_minutes']} minutes.
- Held out: {len(HELDOUT)} triples never trained on ({', '.join(f'"{h}"' for h in HELDOUT)}), spoken with
  `-v {SETTINGS[0][0]} -s {SETTINGS[0][1]} -p {SETTINGS[0][2]}`: `heldout/*.wav`, listed in `heldout/heldout.json`.
- Objective: VITS without the discriminator: {args.mel_weight:g} x multi-resolution log-mel + log-STFT L1 of
  the decoded {SEGMENT}-frame latent segments, the KL of the flowed posterior to the text prior under the
  monotonic alignment search (numpy, run every step; not uniform alignments), and the stochastic duration
  predictor's variational negative log-likelihood of the searched frame counts.
- Training: {args.steps} steps of batch {args.batch_size}, AdamW lr {args.lr:g} (betas 0.8/0.99, warmup
  {args.warmup}, cosine to a tenth), gradient clipping 5, seed {args.seed},
  {args.threads} CPU thread{'s' * (args.threads != 1)} (torch.set_flush_denormal on: denormals slow the vocoder many-fold),
  {figures['train_seconds']:.0f} s for the steps ({figures['total_seconds']:.0f} s with the data and
  evaluation; `{args.command}`).  Final 100-step means: spectral {f['spectral']:.3f}, KL {f['kl']:.3f},
  duration {f['duration']:.3f}.
- Files: `model.safetensors` (float32), `config.json`, the tokenizer files, `heldout/`.

| held-out figure (nats, lower is better) | trained | untrained twin |
| --- | --- | --- |
| log-mel L1 after dynamic time warping | {t['dtw_log_mel_l1']:.3f} | {u['dtw_log_mel_l1']:.3f} |
| log-mel L1 after linear stretching | {t['stretched_log_mel_l1']:.3f} | {u['stretched_log_mel_l1']:.3f} |

Both voices speak the held-out texts through transformers' `VitsModel.forward` (torch seeded with the
utterance's index, the config's noise scales); the twin is the same architecture at its initial weights
(`build_model(config, seed {args.seed})`).  Distances: `models/speech_eval.py` (80-band log-mel, 64 ms
windows, 16 ms hop), reproduced by `python models/speech_eval.py`.
""", encoding="utf-8")


def _espeak_version() -> str:
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
        return out.split("text-to-speech:")[-1].split()[0] if "text-to-speech:" in out else out.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(version unknown)"


if __name__ == "__main__":
    main()
