"""``altclip serve``: an OpenAI-compatible embeddings API, search over an embedding folder, and a search page.

- :mod:`.batching`: the batch handler between HTTP and the model (concurrent requests share forward passes);
- :mod:`.app`: the FastAPI application (routes, OpenAI request/response schemas, error shape, limits);
- :mod:`.files`: the indexed image files the server may read, and their cached thumbnails;
- ``page/``: the search page (plain HTML, JS and CSS, no build step).

Nothing here is imported by ``import altclip_adapters``; FastAPI is needed only by :mod:`.app`
(extra ``serve``).
"""
