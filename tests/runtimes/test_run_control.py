"""A graph that never returns can be stopped: a time limit per graph run, and cancel from another thread.

Every family gets an artifact whose main graph holds a ``Loop`` that never ends (tests/looping_support.py);
its call must end with RunTimeoutError under ``timeout=`` and with CancelledError when another thread
cancels, while the same artifact with a loop of 3 trips runs as before.  Time bounds are generous (a
limit of 0.5 s must end the call within 30 s); the lower bounds hold by construction (the deadline is
set when the run starts).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgegen
from edgegen.errors import CancelledError, InvalidArgumentError, RunTimeoutError
from edgegen.runtimes.run_control import cancel_on
from edgegen.runtimes.session import SessionConfig, create_session
from edgegen.runtimes.text.settings import GenerationSettings
from looping_support import LOOPING_ROLE, family_graphs, images, write_looping_artifact

FAMILIES = sorted(LOOPING_ROLE)
LIMIT_S, BOUND_S = 0.5, 30.0
GREEDY = GenerationSettings(temperature=0, max_new_tokens=3, ignore_eos=True)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory):
    """(family, trips) -> an artifact path, built on first use."""
    made: dict[tuple[str, int | None], Path] = {}

    def get(family: str, trips: int | None = None) -> Path:
        if (family, trips) not in made:
            dest = tmp_path_factory.mktemp("looping") / f"{family}-{trips}"
            made[family, trips] = write_looping_artifact(dest, family, trips)
        return made[family, trips]
    return get


def call(model, **lm_options):
    """The family's main call: text for the LMs, images for the others."""
    if model.family in ("causal-lm", "rnn-lm"):
        return [c.token_ids for c in model.complete(["hi"], GREEDY, **lm_options)]
    return model.sample(2, seed=0)


def timed(fn):
    """(the exception ``fn`` raised or None, seconds), run in a daemon thread: without the fix a looping graph
    never returns, and the test fails after BOUND_S instead of hanging the suite."""
    out: list = []

    def target() -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (the test asserts on what came out)
            out.append(exc)
        else:
            out.append(None)
        out.append(time.perf_counter() - start)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(BOUND_S)
    assert not worker.is_alive(), f"the call did not end within {BOUND_S} s"
    return out[0], out[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_graph_that_loops_forever_ends_at_the_time_limit(artifacts, family, capfd) -> None:
    model = edgegen.load(artifacts(family), provider="cpu", timeout=LIMIT_S)
    exc, seconds = timed(lambda: call(model))
    assert isinstance(exc, RunTimeoutError) and isinstance(exc, TimeoutError), exc
    assert LIMIT_S <= seconds < BOUND_S
    message = str(exc)
    assert f"graph {LOOPING_ROLE[family]!r}" in message and "0.5 s" in message and "--timeout" in message
    assert "loops forever" in message and "\n" not in message
    assert "terminate flag" not in capfd.readouterr().err     # ONNX Runtime's own error log stays quiet
    exc, seconds = timed(lambda: call(model))                 # a fresh limit for the next call, not a stale flag
    assert isinstance(exc, RunTimeoutError) and seconds >= LIMIT_S


@pytest.mark.parametrize("family", FAMILIES)
def test_cancel_from_another_thread_stops_the_run_in_progress(artifacts, family) -> None:
    model = edgegen.load(artifacts(family), provider="cpu")        # no time limit: only the cancel can end it
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    if family in ("causal-lm", "rnn-lm"):                        # the LMs' own cancel= event
        exc, seconds = timed(lambda: call(model, cancel=cancel))
    else:
        def cancellable() -> None:
            with edgegen.cancel_on(cancel):
                call(model)
        exc, seconds = timed(cancellable)
    timer.join()
    assert isinstance(exc, CancelledError), exc
    assert seconds < BOUND_S     # (no lower bound: the timer starts before the clock; the message below says when)
    assert f"while graph {LOOPING_ROLE[family]!r}" in str(exc)      # it stopped the run, not a later check


@pytest.mark.parametrize("family", FAMILIES)
def test_runs_that_end_are_unaffected_by_a_limit_or_a_cancel_scope(artifacts, family) -> None:
    path = artifacts(family, trips=3)
    expected = call(edgegen.load(path, provider="cpu"))
    limited = edgegen.load(path, provider="cpu", timeout=BOUND_S)
    with cancel_on(threading.Event()):                                # never set
        got = call(limited)
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
    else:
        assert got == expected and len(got[0]) == 3


def test_the_generator_s_cancel_interrupts_its_step_and_marks_the_rows(artifacts) -> None:
    forever = edgegen.load(artifacts("causal-lm"), provider="cpu")
    gen = forever.generator(GREEDY, batch=2)
    gen.append_tokens([forever.encode("hi"), forever.encode("hello")])     # causal-lm: runs on the first step
    threading.Timer(0.3, gen.cancel).start()
    exc, _ = timed(gen.generate_next_token)
    assert isinstance(exc, CancelledError) and "while graph 'decoder'" in str(exc), exc
    assert gen.is_done() and gen.finish_reasons == ["cancelled", "cancelled"]
    with pytest.raises(InvalidArgumentError, match="generation is done"):
        gen.generate_next_token()


def test_the_rnn_prefill_is_cancellable_too(artifacts) -> None:
    lm = edgegen.load(artifacts("rnn-lm"), provider="cpu")
    gen = lm.generator(GREEDY)
    threading.Timer(0.3, gen.cancel).start()
    exc, _ = timed(lambda: gen.append_tokens([lm.encode("hi")]))         # the prompt's run loops
    assert isinstance(exc, CancelledError) and "while graph 'step'" in str(exc), exc


def test_the_diffusion_device_loop_is_stopped_too(artifacts) -> None:
    """The IO-binding loop (latents kept on the provider's device; here the CPU's) goes through the same
    guarded session: run_with_iobinding gets the watched RunOptions."""
    model = edgegen.load(artifacts("diffusion"), provider="cpu", timeout=LIMIT_S)
    model.latents_on_device = True
    exc, seconds = timed(lambda: model.sample(1, seed=0))
    assert model._latent_loop is not None, "the device loop did not run"
    assert isinstance(exc, RunTimeoutError) and "graph 'denoiser'" in str(exc) and LIMIT_S <= seconds < BOUND_S
    model = edgegen.load(artifacts("diffusion"), provider="cpu")
    model.latents_on_device = True
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()

    def cancellable() -> None:
        with edgegen.cancel_on(cancel):
            model.sample(1, seed=0)
    exc, _ = timed(cancellable)
    assert isinstance(exc, CancelledError) and "while graph 'denoiser'" in str(exc), exc
    bounded = edgegen.load(artifacts("diffusion", trips=3), provider="cpu", timeout=BOUND_S)
    host = bounded.sample(2, seed=1)
    bounded.latents_on_device = True
    np.testing.assert_array_equal(bounded.sample(2, seed=1), host)


@pytest.mark.parametrize("family, method", [("vae", "reconstruct"), ("vq-vae", "reconstruct"),
                                            ("flow", "bits_per_dim")])
def test_the_other_entry_points_are_limited_too(artifacts, family, method) -> None:
    model = edgegen.load(artifacts(family), provider="cpu", timeout=LIMIT_S)
    exc, seconds = timed(lambda: getattr(model, method)(images(1)))
    assert isinstance(exc, RunTimeoutError) and LIMIT_S <= seconds < BOUND_S, exc


def test_every_way_of_running_a_session_is_watched() -> None:
    graphs, _ = family_graphs("flow", None)
    session = create_session(graphs["flow_inverse"].SerializeToString(), SessionConfig(timeout=0.3), "cpu",
                             label="graph 'g'")
    z = np.zeros((1, 4), np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("z", z)
    binding.bind_output("x")
    mine = ort.RunOptions()
    for run in (lambda: session.run(["x"], {"z": z}),
                lambda: session.run_with_iobinding(binding),
                lambda: session.run_with_ort_values(["x"], {"z": ort.OrtValue.ortvalue_from_numpy(z)}),
                lambda: session.run(["x"], {"z": z}, mine)):              # the caller's own RunOptions
        exc, seconds = timed(run)
        assert isinstance(exc, RunTimeoutError) and "graph 'g' ran longer than the time limit of 0.3 s" in str(exc)
        assert 0.3 <= seconds < BOUND_S
    assert mine.terminate                                              # the caller's options were the ones stopped


def test_a_set_event_refuses_the_next_run_and_scopes_nest() -> None:
    graphs, _ = family_graphs("flow", 3)
    session = create_session(graphs["flow_inverse"].SerializeToString(), SessionConfig(), "cpu", label="graph 'g'")
    z = np.ones((1, 4), np.float32)
    outer, inner = threading.Event(), threading.Event()
    with cancel_on(outer):
        with cancel_on(inner):
            np.testing.assert_array_equal(session.run(["x"], {"z": z})[0], z)
            outer.set()                                                # an outer scope's event counts inside
            with pytest.raises(CancelledError, match="cancelled before graph 'g' ran"):
                session.run(["x"], {"z": z})
    np.testing.assert_array_equal(session.run(["x"], {"z": z})[0], z)   # outside the scopes: runs again
    with pytest.raises(InvalidArgumentError, match="cancel must be a threading.Event"), cancel_on("now"):
        pass


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "1"])
def test_a_bad_timeout_is_one_clear_error(bad, artifacts) -> None:
    with pytest.raises(InvalidArgumentError, match=r"timeout must be a positive number of seconds"):
        SessionConfig(timeout=bad)
    with pytest.raises(InvalidArgumentError, match=r"timeout must be a positive number of seconds"):
        edgegen.load(artifacts("gan", trips=3), provider="cpu", timeout=bad)
    assert SessionConfig(timeout=2).timeout == 2.0


def test_one_watchdog_thread_serves_every_run(artifacts) -> None:
    model = edgegen.load(artifacts("gan", trips=3), provider="cpu", timeout=BOUND_S)
    model.sample(1)
    before = threading.active_count()
    for _ in range(50):
        model.sample(1)
    assert threading.active_count() == before
    assert sum(t.name == "edgegen-run-watchdog" for t in threading.enumerate()) == 1
