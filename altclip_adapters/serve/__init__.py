"""``altclip serve``: an OpenAI-compatible embeddings API, search over an embedding folder, and a search page,
safe to leave running (API keys, Host check, limits and timeouts, health, readiness, metrics, reload).

- :mod:`.app`: ``create_app`` (the FastAPI object, its state and middleware); :mod:`.routes`: one router per
  concern (embeddings, search, collection files, page, operations); :mod:`.schemas`: request/response models;
- :mod:`.prepare`: inputs checked and turned into token ids and cropped pixels per request, under a pixel budget;
- :mod:`.batching`: the batch handler between HTTP and the model (concurrent requests share forward passes);
- :mod:`.security`, :mod:`.metrics`, :mod:`.errors`, :mod:`.limits`: keys, Host names and headers; Prometheus;
  OpenAI's error shape; body size and read time, header timeout;
- :mod:`.folder`, :mod:`.files`: the served embedding folder; the files the server may read, and thumbnails;
- :mod:`.settings`: the operator's choices and defaults; :mod:`.server`: ``build_app``, the uvicorn
  configuration, ``ServerThread``;
- ``page/``: the search page (plain HTML, JS and CSS, no build step).

Nothing here is imported by ``import altclip_adapters``; FastAPI, uvicorn and prometheus-client are needed only
here (extra ``serve``).
"""
