"""``altclip serve``: a real server on a loopback port, driven by real clients (openai, LangChain, httpx,
raw HTTP); the numbers are checked against the core."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from conftest import SCENES, core_images, core_texts, draw_scene, write_collection
from PIL import Image

from altclip_adapters import AltCLIP
from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.serve.app import ServeSettings
from altclip_adapters.serve.batching import BatchHandler
from altclip_adapters.serve.server import ServerThread, build_app, is_loopback

MODEL = "altclip-tiny"
MAX_BYTES = 2**20
MAX_INPUTS = 64
TEXTS = ["a photo of a cat", "一只狗的照片", "猫の写真", "ein Foto von einem Hund", "x", "صورة قطة"]
NAMES = ["scene_0.png", "scene_1.png", "scène 2 猫.png", "scene_3.png", "escape.png"]  # files under images/, by row


def data_uri(image: Image.Image, format: str = "PNG") -> str:
    data = io.BytesIO()
    image.save(data, format)
    return f"data:image/{format.lower()};base64," + base64.b64encode(data.getvalue()).decode()


@pytest.fixture(scope="module")
def core(tiny_dir):
    return AltCLIP.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def pictures():
    return [draw_scene(background, colour, shape) for _, background, colour, shape in SCENES[:5]]


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_dir, pictures):
    """Five scenes under images/ (paths relative to the image base), one of them a symlink leading out of
    the collection, and a row whose image is a URL."""
    root = tmp_path_factory.mktemp("serve")
    (root / "images").mkdir()
    (root / "outside").mkdir()
    rows = []
    for i, picture in enumerate(pictures[:4]):
        picture.save(root / "images" / NAMES[i])
        rows.append({"image": picture, "image_path": f"images/{NAMES[i]}", "caption": SCENES[i][0]})
    pictures[4].save(root / "outside" / "secret.png")
    (root / "images" / "escape.png").symlink_to(root / "outside" / "secret.png")
    rows.append({"image": pictures[4], "image_path": "images/escape.png", "caption": "a symlink leading out"})
    rows.append({"image": pictures[0], "image_path": "https://example.com/remote.jpg", "caption": "a remote image"})
    return write_collection(root, tiny_dir, rows), root


@pytest.fixture(scope="module")
def server(tiny_dir, collection, tmp_path_factory):
    folder, root = collection
    embedder = Embedder.from_pretrained(tiny_dir, num_workers=0)
    settings = ServeSettings(model_id=MODEL, max_request_bytes=MAX_BYTES, max_inputs=MAX_INPUTS)
    app = build_app(embedder, settings, folder=folder, image_base=root,
                    thumbnail_cache=tmp_path_factory.mktemp("thumbnails"), max_wait=0.02)
    with ServerThread(app) as running:
        running.app = app
        yield running


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def assert_serving(server) -> None:
    """The server still answers a normal request correctly."""
    response = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": "still there?"})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 16


def assert_error(response: httpx.Response, status: int, *words: str, param: str | None = None) -> dict:
    """An OpenAI-shaped error with ``status`` whose message names the problem (``words``)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param
    return error


# the OpenAI-compatible API --------------------------------------------------------------------------
def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL


@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])  # None: the client asks for base64 and decodes it
def test_openai_client_texts_equal_the_core(client, core, encoding_format):
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    response = client.embeddings.create(model=MODEL, input=TEXTS, **kwargs)
    got = np.array([d.embedding for d in response.data]) if encoding_format != "base64" else np.stack(
        [np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in response.data])
    np.testing.assert_allclose(got, core_texts(core, TEXTS), atol=1e-5)
    assert [d.index for d in response.data] == list(range(len(TEXTS))) and response.model == MODEL
    tokens = sum(len(ids) for ids in core.processor.tokenizer(TEXTS, truncation=True, max_length=77)["input_ids"])
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_a_single_string_and_a_long_text(client, core):
    long = " ".join(["一只在沙发上睡觉的猫"] * 40)
    response = client.embeddings.create(model=MODEL, input=long, encoding_format="float")
    np.testing.assert_allclose(response.data[0].embedding, core_texts(core, [long])[0], atol=1e-5)
    assert response.usage.prompt_tokens == 77  # read as the model reads it: truncated at its context length
    assert client.embeddings.create(model=MODEL, input="a cat", dimensions=16).data[0].embedding  # its own dimension


def test_openai_client_images_equal_the_core(client, core, pictures):
    uris = [data_uri(p) for p in pictures[:3]] + [data_uri(pictures[3], "JPEG")]
    response = client.embeddings.create(model=MODEL, input=uris, extra_body={"modality": "image"})
    from altclip_adapters.model.images import load_image

    size = core.processor.image_transform.shortest_edge  # JPEGs decode at the reduced DCT scale the resize needs
    jpeg = load_image(base64.b64decode(uris[3].split(",")[1]), draft=size)
    assert min(jpeg.size) < min(pictures[3].size) and min(jpeg.size) >= size  # (the tiny model's edge is small)
    np.testing.assert_allclose(np.array([d.embedding for d in response.data]),
                               core_images(core, pictures[:3] + [jpeg]), atol=1e-5)
    assert response.usage.prompt_tokens == 0


def test_langchain_openai_embeddings(server, core, pictures):
    from langchain_openai import OpenAIEmbeddings

    texts = OpenAIEmbeddings(base_url=server.url + "/v1", model=MODEL, api_key="x", check_embedding_ctx_length=False)
    np.testing.assert_allclose(texts.embed_documents(TEXTS), core_texts(core, TEXTS), atol=1e-5)
    np.testing.assert_allclose(texts.embed_query("一只猫"), core_texts(core, ["一只猫"])[0], atol=1e-5)
    images = OpenAIEmbeddings(base_url=server.url + "/v1", model=MODEL, api_key="x", check_embedding_ctx_length=False,
                              model_kwargs={"extra_body": {"modality": "image"}})
    np.testing.assert_allclose(images.embed_documents([data_uri(p) for p in pictures[:2]]),
                               core_images(core, pictures[:2]), atol=1e-5)


def test_concurrent_requests_equal_sequential_ones_and_share_forward_passes(server, pictures):
    requests = [{"model": MODEL, "input": TEXTS[i % len(TEXTS):] + [f"text number {i}"]} for i in range(24)]
    requests += [{"model": MODEL, "input": [data_uri(pictures[i % 4])], "modality": "image"} for i in range(8)]
    with httpx.Client(timeout=60) as http:
        sequential = [http.post(server.url + "/v1/embeddings", json=body).json() for body in requests]
    handler = server.app.state.handler
    batches, items = handler.batches, handler.items
    barrier, concurrent = threading.Barrier(len(requests)), [None] * len(requests)

    def send(i: int) -> None:
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            concurrent[i] = http.post(server.url + "/v1/embeddings", json=requests[i]).json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for one, other in zip(sequential, concurrent):
        np.testing.assert_allclose([d["embedding"] for d in other["data"]], [d["embedding"] for d in one["data"]], atol=1e-5)
        assert other["usage"] == one["usage"]
    assert handler.batches - batches < len(requests)  # some requests shared a forward pass
    assert handler.items - items == sum(len(body["input"]) for body in requests)


def test_batch_handler_bounds_batches_and_keeps_modalities_apart(tiny_dir, pictures):
    from altclip_adapters.serve.prepare import tokenize

    embedder = Embedder.from_pretrained(tiny_dir, num_workers=0)
    handler = BatchHandler(embedder, max_batch_size=4, max_wait=0.05)
    handler.start()
    sizes = []
    handler.on_batch = lambda modality, items: sizes.append((modality, items))
    ids = tokenize(embedder.processor, TEXTS * 2)
    crops = [embedder.processor.image_transform.uint8(p) for p in pictures]

    async def main():
        return await asyncio.gather(*[handler.embed_tokens([i]) for i in ids], *[handler.embed_pixels([c]) for c in crops])

    try:
        results = asyncio.run(main())
    finally:
        handler.stop()
    texts, images = results[: 2 * len(TEXTS)], results[2 * len(TEXTS):]
    np.testing.assert_allclose(np.concatenate(texts), embedder.texts(TEXTS * 2).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.concatenate(images), embedder.images(pictures).numpy(), atol=1e-5)
    assert all(size <= 4 for _, size in sizes) and {m for m, _ in sizes} == {"text", "image"}
    assert sum(size for _, size in sizes) == 2 * len(TEXTS) + len(pictures)
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchHandler(embedder, max_batch_size=0)


def test_batch_handler_limits_and_failures(tiny_dir):
    import torch

    from altclip_adapters.serve.errors import Overloaded

    embedder = Embedder.from_pretrained(tiny_dir, num_workers=0)
    handler = BatchHandler(embedder, max_pending=2)
    with pytest.raises(RuntimeError, match="call start"):
        asyncio.run(handler.embed_tokens([[0, 5, 2]]))
    handler.start()
    try:
        with pytest.raises(Overloaded, match="at most 2"):
            asyncio.run(handler.embed_tokens([[0, 5, 2]] * 3))
        embedder.device = torch.device("meta")  # a forward pass that really fails fails its requests only
        with pytest.raises(Exception, match="meta"):
            asyncio.run(handler.embed_tokens([[0, 5, 2]]))
        assert "meta" in handler.last_failure[1]
        embedder.device = torch.device("cpu")
        assert asyncio.run(handler.embed_tokens([[0, 5, 2], [0, 6, 2]])).shape == (2, 16)
    finally:
        handler.stop()


def test_an_answered_client_finds_its_items_released(tiny_dir):
    """A client that sends its next request the moment it has an answer must never be refused for its own
    finished items: the pending count is lowered before a future resolves, on success and on failure. The
    batch callback sleeps, so releasing the count after resolving (or after the callback) would fail at once."""
    import torch

    embedder = Embedder.from_pretrained(tiny_dir, num_workers=0)
    clients = 4
    handler = BatchHandler(embedder, max_pending=clients, max_wait=0.001)
    handler.on_batch = lambda modality, items: time.sleep(0.02)
    handler.start()

    async def client(k: int, rounds: int) -> int:
        for i in range(rounds):
            await handler.embed_tokens([[0, 5 + (k + i) % 7, 2]])
        return rounds

    async def main() -> list[int]:
        return await asyncio.gather(*(client(k, 15) for k in range(clients)))

    try:
        assert asyncio.run(main()) == [15] * clients
        assert handler.pending == 0
        embedder.device = torch.device("meta")
        for _ in range(5):  # a failed request also releases its items before its client hears of it
            with pytest.raises(Exception, match="meta"):
                asyncio.run(handler.embed_tokens([[0, 5, 2]] * clients))
        embedder.device = torch.device("cpu")
        assert asyncio.run(handler.embed_tokens([[0, 5, 2]] * clients)).shape == (clients, 16)
    finally:
        handler.stop()


# bad requests: OpenAI's error shape, a message naming the problem, and the server keeps serving --------
BAD_REQUESTS = [
    ({"model": MODEL, "input": [101, 2023, 102]}, 400, ("token arrays are not supported", "check_embedding_ctx_length"), "input"),
    ({"model": MODEL, "input": [[101, 2023], [102]]}, 400, ("token arrays",), "input"),
    ({"model": MODEL, "input": ["a", 3]}, 400, ("input[1] must be a string",), "input"),
    ({"model": MODEL, "input": {"text": "a"}}, 400, ("input must be a string or a list of strings",), "input"),
    ({"model": MODEL, "input": []}, 400, ("input is an empty list",), "input"),
    ({"model": MODEL, "input": ["a", ""]}, 400, ("input[1] is an empty string",), "input"),
    ({"model": MODEL}, 400, ("missing required argument: input",), "input"),
    ({"model": MODEL, "input": "a", "dimensions": 8}, 400, ("dimensions=8", "16-dimensional", "omit dimensions"), "dimensions"),
    ({"model": MODEL, "input": "a", "encoding_format": "int8"}, 400, ("encoding_format", "float", "base64"), "encoding_format"),
    ({"model": MODEL, "input": "a", "modality": "audio"}, 400, ("modality", "text", "image"), "modality"),
    ({"model": MODEL, "input": "data:image/png;base64,AAAA", "modalty": "image"}, 400, ("unrecognized request argument: modalty",), "modalty"),
    ({"model": "text-embedding-3-small", "input": "a"}, 404, ("text-embedding-3-small", "is not served", MODEL), "model"),
    ({"model": MODEL, "input": ["x"] * (MAX_INPUTS + 1)}, 400, (f"{MAX_INPUTS + 1} items", f"at most {MAX_INPUTS}"), "input"),
    ({"model": MODEL, "input": "https://example.com/cat.jpg", "modality": "image"}, 400, ("input[0] is a URL", "--allow-url-fetch"), "input"),
    ({"model": MODEL, "input": ["/etc/passwd"], "modality": "image"}, 400, ("input[0] is neither a data: URI",), "input"),
    ({"model": MODEL, "input": "data:image/png;base64,iVBORw0KGgo=", "modality": "image"}, 400, ("input[0] is not a readable image",), "input"),
    ({"model": MODEL, "input": "data:image/png;base64,@@@", "modality": "image"}, 400, ("input[0]", "base64"), "input"),
]


@pytest.mark.parametrize("body, status, words, param", BAD_REQUESTS)
def test_bad_embedding_requests(server, body, status, words, param):
    assert_error(httpx.post(server.url + "/v1/embeddings", json=body), status, *words, param=param)
    assert_serving(server)


@pytest.mark.parametrize("nulls", [{"encoding_format": None}, {"dimensions": None}, {"user": None}, {"modality": None},
                                   {"encoding_format": None, "dimensions": None, "user": None}])
def test_optional_fields_sent_as_null_take_their_defaults(server, nulls):
    """Gateways (LiteLLM's body) send optional fields as null; OpenAI treats null as absent, and so do we."""
    plain = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": ["a cat", "一只猫"]})
    nulled = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": ["a cat", "一只猫"], **nulls})
    assert nulled.status_code == 200, nulled.text
    assert nulled.json() == plain.json()


@pytest.mark.parametrize("field", ["model", "input"])
def test_a_required_field_sent_as_null_is_missing(server, field):
    body = {"model": MODEL, "input": "a cat", field: None}
    assert_error(httpx.post(server.url + "/v1/embeddings", json=body), 400, field, param=field)


def test_the_openai_client_raises_the_message(client):
    import openai

    with pytest.raises(openai.BadRequestError, match="dimensions=3 cannot be honoured"):
        client.embeddings.create(model=MODEL, input="a", dimensions=3)


def test_malformed_bodies_and_unknown_routes(server):
    response = httpx.post(server.url + "/v1/embeddings", content=b'{"model": ', headers={"content-type": "application/json"})
    assert_error(response, 400, "not valid JSON")
    assert_error(httpx.post(server.url + "/v1/embeddings", json=[1, 2]), 400, "must be a JSON object")
    assert_error(httpx.get(server.url + "/v1/nothing"), 404, "not found: /v1/nothing")
    assert_error(httpx.get(server.url + "/v1/embeddings"), 405, "GET is not allowed")
    assert_serving(server)


def test_bodies_over_the_limit_get_413(server, pictures):
    big = {"model": MODEL, "input": ["word " * 1000] * 250}  # ~1.25 MB
    assert_error(httpx.post(server.url + "/v1/embeddings", json=big), 413, f"at most {MAX_BYTES} bytes")
    assert_serving(server)

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "' + MODEL.encode() + b'", "input": ["'
        for _ in range(300):
            yield b"x" * 4096
        yield b'"]}'

    response = httpx.post(server.url + "/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "over", f"at most {MAX_BYTES} bytes")
    assert_serving(server)
    upload = {"image": ("big.png", b"\x89PNG" + os.urandom(MAX_BYTES), "image/png")}
    assert_error(httpx.post(server.url + "/search", files=upload), 413, "bytes")
    assert_serving(server)


# search ---------------------------------------------------------------------------------------------
def test_search_by_text(server, core, collection):
    query = "一只红色的圆"
    response = httpx.get(server.url + "/search", params={"q": query, "k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    stored = core_images(core, [draw_scene(b, c, s) for _, b, c, s in SCENES[:5]] + [draw_scene(*SCENES[0][1:])])
    expected = stored @ core_texts(core, [query])[0]
    np.testing.assert_allclose([r["score"] for r in body["results"]], np.sort(expected)[::-1][:3], atol=1e-5)
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected[[r["row"] for r in body["results"]]], atol=1e-5)
    assert [r["rank"] for r in body["results"]] == [1, 2, 3] and body["modality"] == "image" and body["query"] == query
    for result in body["results"]:
        row = result["row"]
        assert result["metadata"]["caption"] == ([s[0] for s in SCENES[:4]] + ["a symlink leading out", "a remote image"])[row]
        if row < 5:
            name = quote(NAMES[row])
            assert result["file"] == f"/files/{name}" and result["thumbnail"] == f"/thumbnails/{name}"
        else:
            assert result["file"] == result["thumbnail"] == "https://example.com/remote.jpg"


def test_search_by_uploaded_image(server, core, pictures):
    data = io.BytesIO()
    pictures[2].save(data, "PNG")
    response = httpx.post(server.url + "/search", files={"image": ("query.png", data.getvalue(), "image/png")}, data={"k": "2"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 2 and results[0]["row"] == 2 and results[0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("upload, words", [
    (("notes.txt", b"this is not an image", "text/plain"), ("'notes.txt' is not a readable image",)),
    (("broken.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", "image/png"), ("'broken.png' is not a readable image",)),
    (("empty.jpg", b"", "image/jpeg"), ("'empty.jpg' is empty",)),
])
def test_unreadable_uploads_get_400(server, upload, words):
    assert_error(httpx.post(server.url + "/search", files={"image": upload}), 400, *words, param="image")
    assert_serving(server)


@pytest.mark.parametrize("params, words", [({"q": "  "}, ("q is empty",)), ({"q": "cat", "k": 0}, ("k must be between 1 and 100",)),
                                           ({"q": "cat", "k": "many"}, ("k",)), ({}, ("missing required argument: q",))])
def test_bad_searches(server, params, words):
    assert_error(httpx.get(server.url + "/search", params=params), 400, *words)
    assert_serving(server)


def test_search_without_a_folder(tiny_dir):
    app = build_app(Embedder.from_pretrained(tiny_dir, num_workers=0), ServeSettings(model_id=MODEL))
    with ServerThread(app) as running:
        assert_error(httpx.get(running.url + "/search", params={"q": "cat"}), 404, "altclip serve DIR")
        assert_error(httpx.get(running.url + "/files/scene_0.png"), 404)


# the collection's files --------------------------------------------------------------------------------
def raw_get(server, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of dots or percent signs)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("name", ["scene_1.png", "scène 2 猫.png"])
def test_collection_files_are_served(server, collection, name):
    status, body = raw_get(server, "/files/" + quote(name))
    assert status == 200 and body == (collection[1] / "images" / name).read_bytes()
    assert raw_get(server, "/thumbnails/" + quote(name))[0] == 200


@pytest.mark.parametrize("route", ["/files/", "/thumbnails/"])
@pytest.mark.parametrize("path", [  # the collection's root is images/, the deepest folder holding every indexed file
    "../outside/secret.png", "scene_0.png/../../outside/secret.png", "../images/scene_0.png", "./scene_0.png",
    "%2e%2e/outside/secret.png", "scene_0.png%2f..%2f..%2foutside%2fsecret.png", "%252e%252e/outside/secret.png",
    "..%5coutside%5csecret.png", "/etc/passwd", "%2fetc%2fpasswd", "escape.png", "scene_9.png", "",
    "../emb/altclip.json", "scene_0.png%00.txt", "images/scene_0.png",
])
def test_paths_outside_the_collection_get_404(server, collection, route, path):
    status, body = raw_get(server, route + path)
    assert status == 404, (route + path, body[:200])
    assert not body.startswith((b"\x89PNG", b"\xff\xd8")) and b"root:" not in body  # no image, no /etc/passwd
    assert raw_get(server, route + "scene_0.png")[0] == 200  # still serving


def test_thumbnails_are_made_once_and_cached(server, collection):
    cache = server.app.state.thumbnails.folder
    first = raw_get(server, "/thumbnails/scene_3.png")
    made = sorted(cache.rglob("*.jpg"))
    stamps = [p.stat().st_mtime_ns for p in made]
    second = raw_get(server, "/thumbnails/scene_3.png")
    assert first == second and first[0] == 200
    assert sorted(cache.rglob("*.jpg")) == made and [p.stat().st_mtime_ns for p in made] == stamps
    thumbnail = Image.open(io.BytesIO(first[1]))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 256
    source = (collection[1] / "images" / "scene_3.png").resolve()
    assert server.app.state.thumbnails.path(source) in made


def test_the_page_and_its_assets(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<title>AltCLIP search</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(server.url + "/page/app.js").status_code == 200
    assert raw_get(server, "/page/../serve/app.py")[0] == 404
    assert raw_get(server, "/page/%2e%2e/app.py")[0] == 404


# the command ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_altclip_serve_command(tiny_dir, collection, tmp_path):
    folder, root = collection
    port = free_port()
    command = [sys.executable, "-m", "altclip_adapters.cli", "serve", str(folder), "--port", str(port),
               "--image-base", str(root), "--thumbnail-cache", str(tmp_path / "thumbs")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                models = httpx.get(url + "/v1/models").json()
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() is not None else "timeout"
                time.sleep(0.2)
        assert models["data"][0]["id"] == tiny_dir.name  # the folder's model by its folder name, never a path
        results = httpx.get(url + "/search", params={"q": "猫", "k": 2}).json()["results"]
        assert len(results) == 2
    finally:
        process.terminate()
        process.wait(30)


def test_the_command_refuses_a_missing_folder(tmp_path, capsys):
    from altclip_adapters.cli import main

    assert main(["serve", str(tmp_path / "nothing")]) == 1
    assert "no such embedding folder" in capsys.readouterr().err


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.com")


def test_metadata_becomes_json():
    from altclip_adapters.serve.routes.search import jsonable_metadata

    assert jsonable_metadata({"width": float("nan"), "jpg": b"\xff\xd8", "caption": "猫", "height": 3}) == {
        "width": None, "caption": "猫", "height": 3}


def test_load_benchmark_runs(tiny_dir):
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
    command = [sys.executable, str(bench), "--checkpoint", str(tiny_dir), "--clients", "4", "--requests", "16", "--seconds", "3", "--rounds", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("batched (max 64, 5 ms)", "batching off (max 1)", "4 clients / 1 client (one at a time):",
                 "4 clients, batching on / off:", "total "):
        assert line in result.stdout, result.stdout
