"""``altclip serve`` as an operator runs it: API keys (openai and LangChain clients), health and readiness,
Prometheus metrics, graceful SIGTERM, memory bounded under pixel bombs, served model names, /docs schemas."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from PIL import Image

from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.serve.app import ServeSettings
from altclip_adapters.serve.security import read_api_keys
from altclip_adapters.serve.server import ServerThread, build_app, served_model_name

MODEL = "altclip-tiny"
KEYS = ["sk-first-key", "sk-second-key"]


@pytest.fixture(scope="module")
def embedder(tiny_dir):
    return Embedder.from_pretrained(tiny_dir, num_workers=0)


@pytest.fixture(scope="module")
def server(embedder, scene_collection, tmp_path_factory):
    folder, root = scene_collection
    app = build_app(embedder, ServeSettings(model_id=MODEL, api_keys=KEYS), folder=folder, image_base=root,
                    thumbnail_cache=tmp_path_factory.mktemp("thumbs"))
    with ServerThread(app) as running:
        running.app = app
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# API keys ----------------------------------------------------------------------------------------------
def test_api_keys_as_openai_clients_send_them(server):
    import openai

    for key in KEYS:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        assert len(client.embeddings.create(model=MODEL, input="猫").data[0].embedding) == 16
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key") as caught:
        wrong.embeddings.create(model=MODEL, input="猫")
    assert caught.value.body == {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                 "param": None, "code": "invalid_api_key"}


def test_langchain_with_a_key(server):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MODEL, base_url=server.url + "/v1", api_key=KEYS[1],
                                  check_embedding_ctx_length=False, max_retries=0)
    assert len(embeddings.embed_query("一只猫")) == 16


@pytest.mark.parametrize("path", ["/v1/models", "/search?q=cat", "/files/scene_0.png", "/thumbnails/scene_0.png", "/metrics"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic c2stZmlyc3Qta2V5"},
                                     bearer("sk-first-ke"), bearer("sk-first-key-and-more")])
def test_every_data_route_needs_a_key(server, path, headers):
    response = httpx.get(server.url + path, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key" and response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + path, headers=bearer(KEYS[0])).status_code == 200


def test_public_routes_need_no_key(server):
    for path in ("/health", "/ready", "/", "/page/app.js", "/docs"):
        assert httpx.get(server.url + path).status_code == 200, path


def test_keys_from_the_environment_and_a_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# operators\nsk-file-one\n\n  sk-file-two  \n")
    assert read_api_keys(["sk-argv"], keys, environ={"ALTCLIP_API_KEY": "sk-env"}) == ["sk-argv", "sk-env", "sk-file-one", "sk-file-two"]
    assert read_api_keys(environ={}) == []
    with pytest.raises(ValueError, match="API key 1"):
        read_api_keys(["sk with space"], environ={})
    with pytest.raises(FileNotFoundError):
        read_api_keys(file=tmp_path / "missing", environ={})


def test_served_model_names_are_never_paths(tiny_dir):
    assert served_model_name("BAAI/AltCLIP") == "AltCLIP" and served_model_name("altclip-m9") == "AltCLIP-m9"
    assert served_model_name(str(tiny_dir)) == tiny_dir.name and served_model_name(str(tiny_dir) + "/") == tiny_dir.name
    assert served_model_name("someone/my-altclip") == "my-altclip"


def test_docs_show_the_schemas(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"EmbeddingRequest", "EmbeddingResponse", "ModelList", "SearchResponse", "Ready", "Reloaded"} <= set(schemas)
    response = spec["paths"]["/v1/embeddings"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert response["$ref"].endswith("/EmbeddingResponse")


# health, readiness, metrics ----------------------------------------------------------------------------
def test_ready_turns_503_when_the_model_fails(server, embedder):
    assert httpx.get(server.url + "/ready").json()["status"] == "ready"
    embedder.device = torch.device("meta")  # every forward pass now raises, as a lost GPU would
    try:
        failed = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=bearer(KEYS[0]))
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and "the model fails" in ready.json()["problems"][0], ready.text
        assert httpx.get(server.url + "/health").status_code == 200  # alive, not ready
    finally:
        embedder.device = torch.device("cpu")
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200 and ready.json()["problems"] == []


def test_metrics(server):
    headers = bearer(KEYS[0])
    httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": ["a", "b", "c"]}, headers=headers)
    httpx.get(server.url + "/v1/models", headers=bearer("sk-nope"))
    httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": ""}, headers=headers)
    text = httpx.get(server.url + "/metrics", headers=headers).text
    for line in ('altclip_requests_total{route="/v1/embeddings",status="200"}',
                 'altclip_requests_total{route="/v1/models",status="401"}',
                 'altclip_rejected_requests_total{reason="invalid_api_key"}',
                 'altclip_embedded_items_total{modality="text"}',
                 'altclip_batch_items_bucket{le="4.0",modality="text"}',
                 'altclip_request_seconds_bucket{le="0.5",route="/v1/embeddings"}',
                 "altclip_queue_depth 0.0"):
        assert line in text, line


def test_metrics_count_a_request_before_its_client_has_the_answer(server):
    """A client that scrapes /metrics right after its answer finds that request counted (and its items embedded)."""
    import re

    headers = bearer(KEYS[0])

    def counts(text: str) -> tuple[float, float]:
        requests = re.search(r'altclip_requests_total\{route="/v1/embeddings",status="200"\} (\S+)', text)
        items = re.search(r'altclip_embedded_items_total\{modality="text"\} (\S+)', text)
        return (float(requests[1]) if requests else 0.0), (float(items[1]) if items else 0.0)

    with httpx.Client(headers=headers) as http:
        before = counts(http.get(server.url + "/metrics").text)
        for i in range(1, 21):
            assert http.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]}).status_code == 200
            assert counts(http.get(server.url + "/metrics").text) == (before[0] + i, before[1] + 2 * i)


def test_metrics_can_be_turned_off(embedder):
    with ServerThread(build_app(embedder, ServeSettings(model_id=MODEL, metrics=False))) as running:
        assert httpx.get(running.url + "/metrics").status_code == 404
        assert "altclip_" not in httpx.get(running.url + "/metrics").text


# the command: SIGTERM, memory ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(tiny_dir, *options: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "altclip_adapters.cli", "serve", "--model", str(tiny_dir), "--port", str(port), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start: {process.communicate(timeout=10)[0][-3000:]}")
        time.sleep(0.2)


def test_sigterm_finishes_in_flight_requests_and_exits_0(tiny_dir):
    process, url = start(tiny_dir, "--max-batch-size", "2", env={"ALTCLIP_API_KEY": "sk-env-key"})
    try:
        texts = [f"a long request, text {i} " * 8 for i in range(2048)]  # 1,024 forward passes of 2 texts each
        answers = []
        sender = threading.Thread(target=lambda: answers.append(httpx.post(
            url + "/v1/embeddings", json={"model": tiny_dir.name, "input": texts}, headers=bearer("sk-env-key"), timeout=120)))
        sender.start()
        time.sleep(0.5)
        assert sender.is_alive()  # the request is in flight when the signal comes
        process.send_signal(signal.SIGTERM)
        sender.join(120)
        assert process.wait(60) == 0
        assert answers and answers[0].status_code == 200 and len(answers[0].json()["data"]) == 2048
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status memory figure in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def test_pixel_bombs_stay_within_the_memory_bound(tiny_dir):
    """Four concurrent requests of four 13,000 x 13,000 PNGs (169 MP each, a few KB encoded; allowed by the
    operator's raised pixel limit) decode one at a time under the pixel budget: the server's peak RSS grows by
    less than 1.5 GB and it keeps answering. (The server's default pixel limit refuses them outright.)"""
    bomb = io.BytesIO()
    Image.new("P", (13_000, 13_000)).save(bomb, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(bomb.getvalue()).decode()
    process, url = start(tiny_dir, "--max-image-pixels", "170000000", "--pixel-budget", "170000000", "--pixel-wait", "300")
    try:
        small = io.BytesIO()
        Image.new("RGB", (640, 480), "red").save(small, "PNG")
        first = httpx.post(url + "/v1/embeddings", timeout=120, json={
            "model": tiny_dir.name, "input": "data:image/png;base64," + base64.b64encode(small.getvalue()).decode(),
            "modality": "image"})
        assert first.status_code == 200, first.text  # warm-up: the image path once
        before = vm(process.pid, "VmRSS")

        async def attack():
            async with httpx.AsyncClient(base_url=url, timeout=300) as client:
                bombs = [client.post("/v1/embeddings", json={"model": tiny_dir.name, "input": [uri] * 4, "modality": "image"})
                         for _ in range(4)]
                await asyncio.sleep(0.5)
                alive = await client.post("/v1/embeddings", json={"model": tiny_dir.name, "input": "still answering?"})
                return alive, await asyncio.gather(*bombs)

        alive, answers = asyncio.run(attack())
        growth = vm(process.pid, "VmHWM") - before
        print(f"peak RSS growth: {growth / 2**20:.0f} MiB")
        assert alive.status_code == 200
        assert [a.status_code for a in answers] == [200] * 4
        assert growth < 1.5 * 2**30, f"{growth / 2**20:.0f} MiB"
    finally:
        process.terminate()
        process.communicate(timeout=60)


def test_the_default_pixel_limit_refuses_a_bomb(tiny_dir, server):
    bomb = io.BytesIO()
    Image.new("P", (13_000, 13_000)).save(bomb, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(bomb.getvalue()).decode()
    response = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": uri, "modality": "image"},
                          headers=bearer(KEYS[0]))
    assert response.status_code == 400 and "over the limit of 40,000,000" in response.json()["error"]["message"]


def test_the_command_reports_bad_keys_in_one_line(tiny_dir, tmp_path, capsys):
    from altclip_adapters.cli import main

    assert main(["serve", "--model", str(tiny_dir), "--api-key-file", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("altclip: error: --api-key-file") and "missing" in err and "\n" not in err
    assert main(["serve", "--model", str(tiny_dir), "--api-key", "two words"]) == 1
    assert "API key 1 is empty or holds spaces" in capsys.readouterr().err


def test_the_command_warns_loudly_off_loopback():
    from altclip_adapters.cli.serve import exposed_warning

    assert exposed_warning("0.0.0.0").startswith("WARNING: listening on 0.0.0.0") and "WITHOUT authentication" in exposed_warning("::")
