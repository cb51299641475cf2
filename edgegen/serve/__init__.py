"""``edgegen serve``: an OpenAI-compatible HTTP server over loaded artifacts, with a small web page.

- :mod:`edgegen.serve.scheduler`: one worker thread per language model that runs every request through the
  runtime's step API, admitting new requests at step boundaries (no web framework imported);
- :mod:`edgegen.serve.images`: one worker per image model (diffusion, GAN, VAE, flow);
- :mod:`edgegen.serve.protocol`: OpenAI's request fields -> generation settings, and its response shapes;
- :mod:`edgegen.serve.metrics`: counters and histograms in Prometheus' text format;
- :mod:`edgegen.serve.app`: the FastAPI application (routes, errors, API key, SSE streaming, body limit);
- ``static/``: the web page at ``/`` (plain HTML, JS and CSS; no build step, no CDN).

It sits above the runtime and uses its public API; the runtime never imports it.  FastAPI, uvicorn and
sse-starlette come with the ``edgegen[serve]`` extra and are imported only by :mod:`edgegen.serve.app`.
"""
