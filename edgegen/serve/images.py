"""Image models behind ``POST /v1/images/generations``: one worker thread per model, a bounded queue, PNG bytes.

A model's ``sample(n, seed=...)`` (diffusion, GAN, VAE, VQ-VAE, flow) runs in the model's own single worker
thread, so its graphs run one request at a time; up to ``max_queue`` more wait (then QueueFullError, 429).  A
request whose client went away is cancelled: refused before it starts, or stopped in the middle of a graph run
(``cancel_on``).  Text-to-image models get the prompt; models without text conditioning draw without it.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from edgegen.errors import CancelledError
from edgegen.serve.scheduler import QueueFullError, ShuttingDownError

__all__ = ["ImageWorker", "png_bytes"]


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image ``[H, W, C]`` (C = 1 or 3) as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageWorker:
    """Runs one image model's requests one at a time, in order."""

    def __init__(self, model: Any, *, name: str, max_queue: int = 64, metrics: Any = None) -> None:
        self.model, self.name, self.max_queue, self.metrics = model, name, max_queue, metrics
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"edgegen-serve-{name}")
        self._lock = threading.Lock()
        self._pending = 0                      # running + waiting
        self._closing = False
        self._running: threading.Event | None = None    # the cancel event of the request running now

    @property
    def size(self) -> str:
        """The one size this artifact draws, as OpenAI writes sizes: WIDTHxHEIGHT."""
        _, h, w = self.model.sampler.image_shape
        return f"{w}x{h}"

    @property
    def takes_prompt(self) -> bool:
        return getattr(self.model.sampler, "conditioning", None) == "text"

    def submit(self, n: int, prompt: str, seed: int | None, cancel: threading.Event) -> Future[list[bytes]]:
        """Queue a request for ``n`` images; its future gives their PNG bytes."""
        with self._lock:
            if self._closing:
                raise ShuttingDownError("the server is shutting down; retry later")
            if self._pending > self.max_queue:        # one running, max_queue waiting
                raise QueueFullError(f"model {self.name!r} has {self._pending - 1} requests waiting (the queue holds "
                                     f"{self.max_queue}, --max-queue); retry after a moment")
            self._pending += 1
        future = self._executor.submit(self._run, n, prompt, seed, cancel)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future[list[bytes]]) -> None:
        with self._lock:
            self._pending -= 1
        if self.metrics is not None:
            self.metrics.queued(self.waiting)

    @property
    def waiting(self) -> int:
        with self._lock:
            return max(self._pending - 1, 0)

    def _run(self, n: int, prompt: str, seed: int | None, cancel: threading.Event) -> list[bytes]:
        from edgegen.runtimes.run_control import cancel_on

        if self._closing:
            raise ShuttingDownError("the server shut down before this request ran")
        if cancel.is_set():
            raise CancelledError("the client went away")
        extra = {"prompt": prompt} if self.takes_prompt else {}
        self._running = cancel
        try:
            with cancel_on(cancel):
                images = self.model.sample(n, seed=seed, **extra)                   # uint8 [n, H, W, C]
        except CancelledError:
            if self._closing:
                raise ShuttingDownError("the server shut down before this request finished") from None
            raise
        finally:
            self._running = None
        if self.metrics is not None:
            self.metrics.images(len(images))
        return [png_bytes(image) for image in images]

    def close(self) -> None:
        with self._lock:
            self._closing = True
            running = self._running
        if running is not None:
            running.set()                      # stops the graph run in progress
        self._executor.shutdown(wait=False, cancel_futures=True)
