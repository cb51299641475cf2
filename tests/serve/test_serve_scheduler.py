"""The server's scheduler in-process: requests batched into one generator give what each gives alone, a new
request joins at a step boundary while another runs, a cancelled one stops within a step, the queue is bounded."""

from __future__ import annotations

import threading
import time

import pytest

import edgegen
from edgegen import GenerationSettings
from edgegen.errors import InvalidArgumentError
from edgegen.serve.scheduler import LMRequest, LMScheduler, QueueFullError, ShuttingDownError

GREEDY = GenerationSettings(temperature=0, frequency_penalty=0.5, max_new_tokens=20)


class Recorder:
    """A sink that keeps what it gets; ``on_piece(count)`` runs in the worker thread after each piece."""

    def __init__(self, on_piece=None):
        self.pieces, self.results, self.errors = [], {}, []
        self.finished = threading.Event()
        self.on_piece, self.done_at = on_piece, None

    def piece(self, row, text, logprobs):
        self.pieces.append(text)
        if self.on_piece is not None:
            self.on_piece(len(self.pieces))

    def done(self, row, result):
        self.results[row] = result
        self.done_at = time.perf_counter()
        self.finished.set()

    def error(self, exc):
        self.errors.append(exc)
        self.finished.set()


@pytest.fixture(scope="module")
def lm(chat_lm_artifact):
    return edgegen.load(chat_lm_artifact, provider="cpu", threads=1)


@pytest.fixture
def scheduler(lm):
    s = LMScheduler(lm, name="t", max_batch=16, max_queue=64)
    yield s
    s.close()


def request(lm, prompt, settings=GREEDY, n=1, sink=None):
    return LMRequest(lm.encode(prompt), settings, n, sink or Recorder())


def wait(*requests, timeout=30):
    for r in requests:
        assert r.sink.finished.wait(timeout), "the request did not finish"


def alone(lm, prompt, settings=GREEDY):
    return lm.complete([prompt], settings)[0]


def test_requests_admitted_together_share_one_batch_and_each_gets_what_it_gets_alone(lm, scheduler):
    prompts = [f"item {i}: " + "and more " * i for i in range(10)]     # different lengths: left-padded rows
    requests = [request(lm, p) for p in prompts]
    scheduler.submit(requests)
    wait(*requests)
    assert len({id(r.cohort) for r in requests}) == 1 and requests[0].cohort.gen.batch == 10
    for r, p in zip(requests, prompts):
        want = alone(lm, p)
        got = r.sink.results[0]
        assert (got.text, got.token_ids, got.finish_reason) == (want.text, want.token_ids, want.finish_reason)
        assert "".join(r.sink.pieces) == got.text


def test_a_new_request_joins_at_a_step_boundary_while_another_runs(lm, scheduler):
    long = GenerationSettings(temperature=0, frequency_penalty=0.5, max_new_tokens=150, stop_token_ids=())
    late = request(lm, "late one")
    first = request(lm, "first one", long, sink=Recorder(
        on_piece=lambda count: count == 3 and scheduler.submit([late])))
    scheduler.submit([first])
    wait(first, late)
    assert late.cohort is not first.cohort and scheduler.merged.peak_members == 2     # one batch all the same
    # the late request started and ended while the first was still generating
    assert late.first_token_at < first.sink.done_at and late.sink.done_at < first.sink.done_at
    assert len(first.sink.results[0].token_ids) > 10
    assert first.sink.results[0].text == alone(lm, "first one", long).text
    assert late.sink.results[0].text == alone(lm, "late one").text


def test_requests_joining_at_different_steps_run_as_one_batch_and_get_what_they_get_alone(lm, scheduler):
    """Rows of different cohorts merged: one graph run per step for all of them, each request's tokens (greedy,
    seeded sampling, several choices) the same as run alone."""
    long = GenerationSettings(temperature=0, frequency_penalty=0.5, max_new_tokens=60, stop_token_ids=())
    seeded = GenerationSettings(temperature=1.0, top_p=0.9, seed=5, max_new_tokens=15, ignore_eos=True)
    greedy = GenerationSettings(temperature=0, frequency_penalty=0.5, max_new_tokens=20, ignore_eos=True)
    joining = [(f"joins {i}: " + "word " * (3 * i), seeded if i == 2 else greedy, 2 if i == 4 else 1)
               for i in range(6)]
    late = [request(lm, p, s, n) for p, s, n in joining]
    first = request(lm, "the first one", long)
    merged_step = scheduler.merged.step

    def step():            # the k-th late request is submitted after the k-th merged step: each at its own boundary
        merged_step()
        if scheduler.merged.steps <= len(late):
            scheduler.submit([late[scheduler.merged.steps - 1]])

    scheduler.merged.step = step
    scheduler.submit([first])
    wait(first, *late)
    assert len({id(r.cohort) for r in [first, *late]}) == 7
    assert scheduler.merged.peak_members == 7 and scheduler.merged.peak_rows == 8
    generated = sum(len(row.token_ids) for r in [first, *late] for row in r.sink.results.values())
    # one run per step for everyone: about as many runs as the longest request's steps, not one per request
    assert scheduler.merged.steps <= max(len(first.sink.results[0].token_ids), len(late) + 20)
    assert scheduler.merged.steps < generated / 3
    assert first.sink.results[0].text == alone(lm, "the first one", long).text
    for r, (p, s, n) in zip(late, joining):
        want = lm.complete([p], s)[0] if n == 1 else None
        for row in range(n):
            got = r.sink.results[row]
            if want is not None:
                assert (got.text, got.token_ids, got.finish_reason) == (want.text, want.token_ids, want.finish_reason)
        if n == 2:       # greedy: both choices are the one greedy answer
            assert r.sink.results[0].token_ids == r.sink.results[1].token_ids == alone(lm, p, s).token_ids


def test_a_cancelled_request_stops_within_a_step_and_its_batch_mates_go_on(lm, scheduler):
    long = GenerationSettings(temperature=0, frequency_penalty=0.5, max_new_tokens=150)
    mate = request(lm, "mate", long)
    gone = request(lm, "gone", long)
    gone.sink.on_piece = lambda count: count == 1 and scheduler.cancel(gone)
    scheduler.submit([gone, mate])
    wait(gone, mate)
    assert gone.cohort is mate.cohort
    assert gone.sink.results[0].finish_reason == "cancelled" and len(gone.sink.results[0].token_ids) <= 2
    assert mate.sink.results[0].text == alone(lm, "mate", long).text
    assert not gone.cohort.event.is_set()          # the batch went on for its other request


def test_a_cancelled_request_alone_stops_its_generator(lm, scheduler):
    gone = request(lm, "alone", GenerationSettings(temperature=0, max_new_tokens=150))
    gone.sink.on_piece = lambda count: count == 1 and scheduler.cancel(gone)
    scheduler.submit([gone])
    wait(gone)
    assert gone.cohort.event.is_set()              # a graph run in progress would have been stopped too
    assert gone.sink.results[0].finish_reason == "cancelled" and len(gone.sink.results[0].token_ids) <= 2


def test_seeded_sampling_runs_alone_and_repeats_the_runtimes_text(lm, scheduler):
    seeded = GenerationSettings(temperature=1.0, seed=3, max_new_tokens=12)
    a, b = request(lm, "seeded", seeded), request(lm, "seeded", seeded)
    scheduler.submit([a, b])
    wait(a, b)
    assert a.cohort is not b.cohort
    assert a.sink.results[0].text == b.sink.results[0].text == alone(lm, "seeded", seeded).text


def test_a_request_that_cannot_start_fails_alone(lm, scheduler):
    bad = request(lm, "bad", GenerationSettings(temperature=0, max_new_tokens=5,
                                                response_format={"type": "regex", "regex": 5}))
    good = request(lm, "good")
    scheduler.submit([bad, good])
    wait(bad, good)
    assert isinstance(bad.sink.errors[0], InvalidArgumentError) and good.sink.results[0].text == alone(lm, "good").text


def test_the_queue_is_bounded_all_or_none_and_close_answers_everyone(lm):
    s = LMScheduler(lm, name="small", max_batch=1, max_queue=2)
    gate = threading.Event()
    running = request(lm, "blocks the worker", GenerationSettings(temperature=0, max_new_tokens=150),
                      sink=Recorder(on_piece=lambda count: gate.wait(30)))
    try:
        s.submit([running])
        while running.first_token_at is None:
            time.sleep(0.005)
        waiting = [request(lm, "w1"), request(lm, "w2")]
        s.submit(waiting)
        with pytest.raises(QueueFullError, match="--max-queue"):
            s.submit([request(lm, "one too many")])
        with pytest.raises(QueueFullError):
            s.submit([request(lm, "a"), request(lm, "b")])
        assert s.waiting == 2
    finally:
        closer = threading.Thread(target=s.close)
        closer.start()
        gate.set()
        closer.join(30)
    wait(running, *waiting)
    assert all(isinstance(r.sink.errors[0], ShuttingDownError) for r in [running, *waiting])
    with pytest.raises(ShuttingDownError):
        s.submit([request(lm, "after")])


def test_group_query_attention_models_run_each_cohort_on_its_own(tmp_path):
    """A GroupQueryAttention artifact's rows cannot be left-padded: no merged batch; a late request still starts
    at a step boundary (a cohort of its own) and each gets what it gets alone."""
    from tests_support import write_tiny_hf_lm

    hf = write_tiny_hf_lm(tmp_path / "hf", "llama", hidden_size=64, max_position_embeddings=128)
    gqa = edgegen.load(edgegen.convert(hf, tmp_path / "art", attention="gqa"), provider="cpu", threads=1)
    s = LMScheduler(gqa, name="gqa", max_batch=8, max_queue=8)
    try:
        assert s.merged is None
        long = GenerationSettings(temperature=0, max_new_tokens=100, ignore_eos=True)
        late = [request(gqa, "late one"), request(gqa, "a longer late one " * 3)]
        first = request(gqa, "first one", long, sink=Recorder(on_piece=lambda count: count == 3 and s.submit(late)))
        s.submit([first])
        wait(first, *late)
    finally:
        s.close()
    assert late[0].cohort is late[1].cohort is not first.cohort
    assert late[0].first_token_at < first.sink.done_at          # it started while the first ran
    for r, p, settings in [(first, "first one", long), (late[0], "late one", GREEDY),
                           (late[1], "a longer late one " * 3, GREEDY)]:
        assert r.sink.results[0].token_ids == alone(gqa, p, settings).token_ids
