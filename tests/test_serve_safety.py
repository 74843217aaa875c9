"""``altclip serve`` attacked as issue 17 did, through real clients against a real uvicorn on loopback: traversal
through untrusted metadata, batch poisoning, slow clients, connection floods, foreign Host headers, a corrupt
index; and the folder reloaded without a restart."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import logging
import socket
import time

import httpx
import numpy as np
import pytest
from conftest import core_images, core_texts, draw_scene
from PIL import Image

from altclip_adapters import AltCLIP
from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.serve.app import ServeSettings
from altclip_adapters.serve.batching import BatchHandler
from altclip_adapters.serve.server import ServerThread, build_app
from altclip_adapters.serve.settings import Connections
from altclip_adapters.collection.store import EmbeddingWriter

MODEL = "altclip-tiny"


def png_uri(image: Image.Image) -> str:
    data = io.BytesIO()
    image.save(data, "PNG")
    return "data:image/png;base64," + base64.b64encode(data.getvalue()).decode()


@pytest.fixture(scope="module")
def core(tiny_dir):
    return AltCLIP.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def embedder(tiny_dir):
    return Embedder.from_pretrained(tiny_dir, num_workers=0)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, core):
    """A folder whose metadata names files outside the image base, as img2dataset shards can: a parquet
    ``image_path`` of /etc/hostname and a tar-derived ``../../../../etc/passwd.jpg``, beside two honest rows."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "images").mkdir()
    pictures = [draw_scene("white", "red", "circle"), draw_scene("black", "blue", "square")]
    for i, picture in enumerate(pictures):
        picture.save(root / "images" / f"ok_{i}.png")
    paths = ["images/ok_0.png", "/etc/hostname", "../../../../etc/passwd.jpg", "images/ok_1.png"]
    writer = EmbeddingWriter(root / "emb", model="altclip-tiny", dtype="float32")
    images = [pictures[0], pictures[1], pictures[0], pictures[1]]
    writer.write_shard(0, image_embeddings=core_images(core, images), text_embeddings=core_texts(core, paths),
                       metadata=[{"image_path": p, "caption": p} for p in paths])
    return root


def test_metadata_cannot_widen_the_servable_root(embedder, hostile, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="altclip.serve"):
        app = build_app(embedder, ServeSettings(model_id=MODEL), folder=hostile / "emb", image_base=hostile,
                        thumbnail_cache=tmp_path)
    reports = [r.getMessage() for r in caplog.records if "outside the image base" in r.getMessage()]
    assert len(reports) == 1 and "2 image path(s)" in reports[0] and "/etc/hostname" in reports[0]
    with ServerThread(app) as server:
        for route in ("/files/", "/thumbnails/"):
            for path in ("etc/hostname", "etc/passwd.jpg", "../../../../etc/passwd.jpg", "/etc/hostname", "%2fetc%2fhostname",
                         "hostname", "passwd.jpg", "ok_0.png/../../../../etc/hostname"):
                status, body = raw(server, "GET", route + path)
                assert status == 404, (route + path, body[:100])
                assert b"root:" not in body and socket.gethostname().encode() not in body
            assert raw(server, "GET", route + "ok_0.png")[0] == 200
        results = httpx.get(server.url + "/search", params={"q": "x", "k": 4}).json()["results"]
        links = {r["metadata"]["image_path"]: r["file"] for r in results}
        assert links["/etc/hostname"] is None and links["../../../../etc/passwd.jpg"] is None
        assert links["images/ok_0.png"] == "/files/ok_0.png"


def test_metadata_naming_files_that_are_not_images_gets_nothing(embedder, core, tmp_path, caplog):
    """A server started in a home folder (the default base is the current folder) with a dataset whose keys name
    ``.ssh/id_rsa`` or ``notes.txt``: inside the base, but not images, so never served."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    (home / "notes.txt").write_text("secret notes")
    picture = draw_scene("white", "red", "circle")
    picture.save(home / "ok.png")
    paths = [".ssh/id_rsa", "notes.txt", "ok.png"]
    EmbeddingWriter(home / "emb", model="altclip-tiny", dtype="float32").write_shard(
        0, image_embeddings=core_images(core, [picture] * 3), text_embeddings=core_texts(core, paths),
        metadata=[{"image_path": p} for p in paths])
    with caplog.at_level(logging.WARNING, logger="altclip.serve"):
        app = build_app(embedder, ServeSettings(model_id=MODEL), folder=home / "emb", image_base=home,
                        thumbnail_cache=tmp_path / "thumbs")
    reports = [r.getMessage() for r in caplog.records if "name no image file" in r.getMessage()]
    assert len(reports) == 1 and "2 image path(s)" in reports[0] and ".ssh/id_rsa" in reports[0]
    with ServerThread(app) as server:
        for route in ("/files/", "/thumbnails/"):
            for path in (".ssh/id_rsa", "notes.txt", "%2essh/id_rsa"):
                status, body = raw(server, "GET", route + path)
                assert status == 404 and b"PRIVATE KEY" not in body and b"secret" not in body, (route + path, body[:80])
            assert raw(server, "GET", route + "ok.png")[0] == 200


def raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    """One request exactly as written (no client-side normalisation)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# batch poisoning ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(embedder, hostile, tmp_path_factory):
    settings = ServeSettings(model_id=MODEL, max_input_chars=2000)
    app = build_app(embedder, settings, folder=hostile / "emb", image_base=hostile,
                    thumbnail_cache=tmp_path_factory.mktemp("thumbs"), max_wait=0.01)
    with ServerThread(app) as running:
        running.app = app
        yield running


POISON = [  # (raw JSON body, words the 400 names)
    ('{"model": "altclip-tiny", "input": ["fine", "x\\ud800"]}', ("input[1]", "not valid Unicode")),
    ('{"model": "altclip-tiny", "input": "\\udfff alone"}', ("input[0]", "not valid Unicode")),
    ('{"model": "altclip-tiny", "input": ["a", 5]}', ("input[1] must be a string",)),
    ('{"model": "altclip-tiny", "input": [[1, 99999999]]}', ("token arrays",)),
    ('{"model": "altclip-tiny", "input": ["' + "long " * 500 + '"]}', ("input[0]", "2,500 characters", "at most 2,000")),
    ('{"model": "altclip-tiny", "input": ["ok", "data:image/png;base64,iVBORw0KGgo="], "modality": "image"}',
     ("input[0] is neither",)),
    ('{"model": "altclip-tiny", "input": ["data:image/png;base64,iVBORw0KGgo="], "modality": "image"}',
     ("input[0] is not a readable image",)),
]


def test_a_poisoned_request_fails_alone(server, embedder):
    good = [f"text number {i} 猫" for i in range(300)]
    strip = png_uri(Image.new("RGB", (1, 3000), "red"))  # degenerate shapes reach the model cropped like any other
    dot = png_uri(Image.new("RGB", (1, 1), "blue"))

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=400)) as client:
            goods = [client.post("/v1/embeddings", json={"model": MODEL, "input": text}) for text in good]
            bad = [client.post("/v1/embeddings", content=body.encode(), headers={"content-type": "application/json"})
                   for body, _ in POISON]
            odd = [client.post("/v1/embeddings", json={"model": MODEL, "input": [strip, dot], "modality": "image"}),
                   client.post("/v1/embeddings", json={"model": MODEL, "input": "a\x00b"})]  # NUL: a token like any other
            return await asyncio.gather(*goods, *bad, *odd)

    responses = asyncio.run(main())
    goods, bad, odd = responses[:300], responses[300:300 + len(POISON)], responses[300 + len(POISON):]
    assert [r.status_code for r in goods] == [200] * 300
    np.testing.assert_allclose([r.json()["data"][0]["embedding"] for r in goods], embedder.texts(good).numpy(), atol=1e-5)
    for response, (_, words) in zip(bad, POISON):
        assert response.status_code == 400, response.text
        for word in words:
            assert word in response.json()["error"]["message"], response.text
    assert [r.status_code for r in odd] == [200, 200], [r.text for r in odd]


def test_a_batch_that_fails_is_retried_per_request(embedder):
    """Items that pass validation but make the model raise (here token ids outside the vocabulary, put straight
    on the queue) fail their own request only, also when they share a forward pass with others."""
    handler = BatchHandler(embedder, max_batch_size=64, max_wait=0.2)
    handler.start()

    async def main():
        good = [handler.embed_tokens([[0, 5 + i, 2]]) for i in range(20)]
        return await asyncio.gather(*good[:10], handler.embed_tokens([[0, 10**6, 2]]), *good[10:], return_exceptions=True)

    try:
        results = asyncio.run(main())
    finally:
        handler.stop()
    assert isinstance(results[10], IndexError)
    assert all(isinstance(r, np.ndarray) and r.shape == (1, 16) for r in results[:10] + results[11:])
    assert handler.batches < 21 + 1  # the first attempt shared a batch


# slow clients and floods -------------------------------------------------------------------------------
def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_within(sock: socket.socket, payload: bytes, seconds: float) -> float:
    """Send ``payload`` one byte every 0.25 s until the server closes the connection; the seconds it took
    (or ``seconds`` + 1 if it never did)."""
    start = time.monotonic()
    for byte in payload:
        try:
            sock.sendall(bytes([byte]))
            sock.settimeout(0.25)
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            break
    return seconds + 1


@pytest.fixture(scope="module")
def impatient(embedder):
    """A server with 1 s header and body timeouts."""
    app = build_app(embedder, ServeSettings(model_id=MODEL, body_timeout=1.0))
    with ServerThread(app, connections=Connections(header_timeout=1.0)) as running:
        yield running


def test_slow_clients_are_dropped(impatient):
    server = impatient
    slow = [connect(server) for _ in range(8)]
    try:
        header = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        assert closed_within(slow[0], header, 4.0) < 3.0  # header timeout 1 s
        assert httpx.get(server.url + "/v1/models").status_code == 200
        body = json.dumps({"model": MODEL, "input": "slow"}).encode()
        slow[1].close()
        slow[1] = connect(server)  # a fresh connection (the idle ones are being closed meanwhile)
        slow[1].sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body))
        start, answer = time.monotonic(), b""
        slow[1].settimeout(0.25)
        for byte in body:  # the body at 4 bytes/s: 408 once the 1 s body timeout passes
            try:
                slow[1].sendall(bytes([byte]))
                answer += slow[1].recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        slow[1].settimeout(2)
        while b"did not arrive" not in answer and (more := slow[1].recv(4096)):  # the body may come in a second packet
            answer += more
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer, answer
        assert time.monotonic() - start < 3
        for sock in slow[2:]:  # idle connections that never send anything are closed too
            sock.settimeout(5)
            assert sock.recv(10) == b""
    finally:
        for sock in slow:
            sock.close()
    assert httpx.get(server.url + "/v1/models").status_code == 200


def test_connections_are_capped(embedder):
    app = build_app(embedder, ServeSettings(model_id=MODEL))
    with ServerThread(app, connections=Connections(header_timeout=5.0, limit_concurrency=4)) as running:
        idle = [connect(running) for _ in range(4)]
        try:
            time.sleep(0.2)
            assert httpx.get(running.url + "/health").status_code == 503
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.2)
        assert httpx.get(running.url + "/health").status_code == 200


# Host names, headers, CORS ------------------------------------------------------------------------------
def test_foreign_host_names_are_refused(server):
    port = server.url.rsplit(":", 1)[1]
    assert raw(server, "GET", "/v1/models", headers={"Host": "evil.example"})[0] == 400  # DNS rebinding
    assert raw(server, "GET", "/v1/models", headers={"Host": f"attacker.test:{port}"})[0] == 400
    for name in ("localhost", "127.0.0.1"):
        assert raw(server, "GET", "/v1/models", headers={"Host": f"{name}:{port}"})[0] == 200


def test_allowed_hosts_extend_the_list(embedder):
    app = build_app(embedder, ServeSettings(model_id=MODEL, allowed_hosts=["127.0.0.1", "search.example.org"]))
    with ServerThread(app) as running:
        assert raw(running, "GET", "/health", headers={"Host": "search.example.org"})[0] == 200
        assert raw(running, "GET", "/health", headers={"Host": "other.example.org"})[0] == 400


def test_security_headers_and_no_cors_by_default(server):
    for path in ("/", "/v1/models", "/nothing", "/page/app.js"):
        response = httpx.get(server.url + path, headers={"Origin": "https://evil.example"})
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "access-control-allow-origin" not in response.headers, path
    assert "frame-ancestors 'none'" in httpx.get(server.url + "/").headers["content-security-policy"]
    preflight = httpx.options(server.url + "/v1/embeddings", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_when_asked(embedder):
    app = build_app(embedder, ServeSettings(model_id=MODEL, cors_origins=["https://app.example"]))
    with ServerThread(app) as running:
        ok = httpx.get(running.url + "/v1/models", headers={"Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.get(running.url + "/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# a corrupt index, and a reload -------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_a_corrupt_index_never_makes_searches_500(embedder, scene_collection, tmp_path, damage, caplog):
    import shutil

    from altclip_adapters.collection.index import build_index, index_path

    folder = tmp_path / "emb"
    shutil.copytree(scene_collection[0], folder)
    build_index(folder, index_key="Flat")
    path = index_path(folder, "image")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else np.random.default_rng(0).bytes(len(data)))
    with caplog.at_level(logging.WARNING):
        app = build_app(embedder, ServeSettings(model_id=MODEL), folder=folder, image_base=scene_collection[1],
                        thumbnail_cache=tmp_path / "thumbs")
    warnings = [r.getMessage() for r in caplog.records if "index" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, at start
    with ServerThread(app) as running:
        searches = [httpx.get(running.url + "/search", params={"q": "cat", "k": 3}) for _ in range(3)]
        ready = httpx.get(running.url + "/ready")
        assert {r.status_code for r in searches} in ({200}, {503})  # exact search as a fallback, or one clear line
        if searches[0].status_code == 503:
            assert "altclip index" in searches[0].json()["error"]["message"]
            assert ready.status_code == 503 and "altclip index" in ready.json()["problems"][0]
        else:
            assert ready.status_code == 200
        assert httpx.post(running.url + "/v1/embeddings", json={"model": MODEL, "input": "a"}).status_code == 200


def test_reload_finds_new_rows(embedder, core, scene_collection, tmp_path):
    import shutil

    folder = tmp_path / "emb"
    shutil.copytree(scene_collection[0], folder)
    shutil.copytree(scene_collection[1] / "images", tmp_path / "images")
    app = build_app(embedder, ServeSettings(model_id=MODEL), folder=folder, image_base=tmp_path,
                    thumbnail_cache=tmp_path / "thumbs")
    added = draw_scene("yellow", "purple", "triangle")
    added.save(tmp_path / "images" / "added_by_reload.png")
    with ServerThread(app) as running:
        before = httpx.get(running.url + "/search", params={"q": "a purple triangle", "k": 100}).json()["results"]
        EmbeddingWriter(folder, model=app.state.served.index.model, dtype="float32").write_shard(
            1, image_embeddings=core_images(core, [added]), text_embeddings=core_texts(core, ["a purple triangle"]),
            metadata=[{"image_path": "images/added_by_reload.png", "caption": "a purple triangle"}])
        reloaded = httpx.post(running.url + "/admin/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["counts"]["image"] == len(before) + 1
        after = httpx.get(running.url + "/search", params={"q": "a purple triangle", "k": 100}).json()["results"]
        assert len(after) == len(before) + 1
        new = [r for r in after if r["metadata"]["caption"] == "a purple triangle"]
        assert len(new) == 1 and new[0]["row"] == len(before)
        assert raw(running, "GET", new[0]["file"])[0] == 200


def test_a_changed_folder_is_reopened_without_a_restart(embedder, core, scene_collection, tmp_path):
    import shutil
    import time

    from altclip_adapters.serve.folder import RECHECK_SECONDS

    folder = tmp_path / "emb"
    shutil.copytree(scene_collection[0], folder)
    app = build_app(embedder, ServeSettings(model_id=MODEL), folder=folder, image_base=scene_collection[1],
                    thumbnail_cache=tmp_path / "thumbs")
    with ServerThread(app) as running:
        before = httpx.get(running.url + "/search", params={"q": "a purple triangle", "k": 100}).json()["results"]
        EmbeddingWriter(folder, model=app.state.served.index.model, dtype="float32").write_shard(
            1, image_embeddings=core_images(core, [draw_scene("yellow", "purple", "triangle")]),
            text_embeddings=core_texts(core, ["a purple triangle"]),
            metadata=[{"image_path": "images/new.png", "caption": "a purple triangle"}])
        time.sleep(RECHECK_SECONDS + 0.5)
        after = httpx.get(running.url + "/search", params={"q": "a purple triangle", "k": 100}).json()["results"]
        assert len(after) == len(before) + 1
        assert [r["row"] for r in after if r["metadata"]["caption"] == "a purple triangle"] == [len(before)]
