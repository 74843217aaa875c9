"""``altclip serve``: an OpenAI-compatible embeddings API, search over an embedding folder, and a search page.

- :mod:`.app`: the FastAPI application (routes, OpenAI's request/response schemas and error shape);
- :mod:`.errors`, :mod:`.limits`: the error body; the request-body size limit (ASGI middleware);
- :mod:`.batching`: the batch handler between HTTP and the model (concurrent requests share forward passes);
- :mod:`.files`: the indexed image files the server may read, and their cached thumbnails;
- :mod:`.server`: ``build_app`` (an embedder and an optional folder -> the application), ``ServerThread``;
- ``page/``: the search page (plain HTML, JS and CSS, no build step).

Nothing here is imported by ``import altclip_adapters``; FastAPI and uvicorn are needed only here (extra
``serve``).
"""
