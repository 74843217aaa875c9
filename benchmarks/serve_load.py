"""Load benchmark of ``altclip serve``: throughput and latency at 1 and 32 concurrent clients, loopback only.

    python benchmarks/serve_load.py                         # CPU, a tiny random checkpoint: ~3 min
    python benchmarks/serve_load.py --shape full            # BAAI/AltCLIP's shapes (random weights), CPU
    python benchmarks/serve_load.py --shape full --device cuda --modality image
    python benchmarks/serve_load.py --checkpoint DIR        # any checkpoint folder

Starts ``altclip serve`` in a subprocess on 127.0.0.1 (a free port), sends ``POST /v1/embeddings`` requests
of one text each (``--modality image``: one 224x224 PNG data URI each) from 1 client, then from 32
concurrent clients (asyncio + httpx, in this process), and prints requests/s, p50 and p99 latency and
the ratio of the 32-client throughput to the one-at-a-time throughput (target: >= 3x). Then the same
32 clients against a server with batching off (``--max-batch-size 1``): what dynamic batching adds at
the same concurrency. Both servers run side by side and the three phases alternate for ``--rounds`` rounds
(each line keeps its best), so that other work on the machine hurts every line alike. Every phase stops
after ``--requests`` requests or ``--seconds`` seconds, whichever comes first, after a short warm-up; the
server start is bounded by ``--start-timeout``. Servers run as deployed: an API key required (sent as
``Authorization: Bearer``; ``--no-auth`` to measure without) and Prometheus metrics on (``--no-metrics``); the
batched server's mean batch size is read from its ``/metrics`` at the end.

Checkpoints are random (``altclip_adapters.model.tiny.make_checkpoint``), written once under ``--workdir``
(``full``: the one ``benchmarks/bench.py`` writes, XLM-R large + ViT-L/14).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

SENTENCES = [
    "a photo of a cat sleeping on a sofa", "一只在沙发上睡觉的猫", "ソファで眠る猫の写真", "ein Hund spielt im Garten",
    "a red car parked on a narrow street at night", "两个人在公园里骑自行车", "une tour au coucher du soleil",
    "a bowl of noodles with chopsticks", "東京の夜景", "una foto di un cane che corre sulla spiaggia",
    "a diagram of a neural network with three layers and many connections between them", "雪山下的湖泊",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_uris(count: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    uris = []
    for _ in range(count):
        data = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(data, "PNG")
        uris.append("data:image/png;base64," + base64.b64encode(data.getvalue()).decode())
    return uris


class Server:
    """``altclip serve`` in a subprocess on a free loopback port, stopped on exit."""

    def __init__(self, args: argparse.Namespace, max_batch_size: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "altclip_adapters.cli", "serve", "--model", str(args.checkpoint),
                        "--host", "127.0.0.1", "--port", str(self.port), "--max-batch-size", str(max_batch_size),
                        "--max-wait-ms", str(args.max_wait_ms)]
        self.command += ["--device", args.device] + (["--dtype", args.dtype] if args.dtype else [])
        self.command += ["--no-metrics"] if args.no_metrics else []
        self.key = None if args.no_auth else "sk-bench-" + os.urandom(8).hex()
        self.headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.timeout = args.start_timeout
        self.log = tempfile.TemporaryFile()

    def __enter__(self) -> Server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"ALTCLIP_API_KEY": self.key} if self.key else {})}
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.model = httpx.get(self.url + "/v1/models", headers=self.headers, timeout=5).json()["data"][0]["id"]
                return self
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    self.log.seek(0)
                    raise RuntimeError("the server did not start:\n" + self.log.read().decode(errors="replace")[-3000:])
                time.sleep(0.25)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


    def mean_batch(self) -> str:
        """The mean items per forward pass so far, from the server's /metrics."""
        text = httpx.get(self.url + "/metrics", headers=self.headers, timeout=10).text
        values = {}
        for line in text.splitlines():
            if line.startswith(("altclip_batch_items_sum", "altclip_batch_items_count")):
                name, value = line.split(" ")
                values[name.split("{")[0]] = values.get(name.split("{")[0], 0.0) + float(value)
        count = values.get("altclip_batch_items_count", 0)
        return f"{values['altclip_batch_items_sum'] / count:.1f} items per forward pass over {count:.0f}" if count else "no batches"


async def load(url: str, bodies: list[dict], clients: int, requests: int, seconds: float,
               headers: dict | None = None) -> tuple[list[float], float]:
    """Latencies (s) of the requests ``clients`` concurrent clients completed, and the wall time, stopping
    after ``requests`` requests or ``seconds`` seconds (requests in flight then finish)."""
    latencies: list[float] = []
    started = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as http:

        async def client() -> None:
            nonlocal started
            while started < requests and time.perf_counter() < deadline:
                body = bodies[started % len(bodies)]
                started += 1
                start = time.perf_counter()
                response = await http.post("/v1/embeddings", json=body)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(clients)])
        return latencies, time.perf_counter() - start


def phase(server: Server, bodies: list[dict], clients: int, args: argparse.Namespace) -> tuple[float, float, float, int, float]:
    """(requests/s, p50 ms, p99 ms, requests, seconds) of one timed phase, after a short warm-up."""
    bodies = [{**body, "model": server.model} for body in bodies]
    asyncio.run(load(server.url, bodies, clients, min(2 * clients, 64), 60, server.headers))  # warm-up: first batches
    latencies, wall = asyncio.run(load(server.url, bodies, clients, args.requests, args.seconds, server.headers))
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    return len(latencies) / wall, p50, p99, len(latencies), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "b32", "full"], default="tiny",
                        help="a random checkpoint of these shapes (tiny; b32: ViT-B/32 + tiny text tower; full: BAAI/AltCLIP's)")
    parser.add_argument("--checkpoint", help="a checkpoint folder instead of --shape")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "altclip-bench"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: the server's (fp32 on cpu, bf16 on cuda)")
    parser.add_argument("--modality", choices=["text", "image"], default="text")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000, help="most requests per phase")
    parser.add_argument("--seconds", type=float, default=20, help="most seconds per phase")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the three phases; the best is kept")
    parser.add_argument("--max-batch-size", type=int, default=64, help="the batched server's --max-batch-size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument("--no-auth", action="store_true", help="servers without an API key (default: one required)")
    parser.add_argument("--no-metrics", action="store_true", help="servers without /metrics (default: on)")
    args = parser.parse_args()
    if args.checkpoint is None:
        args.checkpoint = Path(args.workdir) / args.shape
        if not (args.checkpoint / "config.json").is_file():
            from altclip_adapters.model.tiny import make_checkpoint

            print(f"writing a random {args.shape} checkpoint to {args.checkpoint} ...", flush=True)
            make_checkpoint(args.checkpoint, args.shape)
    if args.modality == "text":
        bodies = [{"input": [text]} for text in SENTENCES]
    else:
        bodies = [{"input": [uri], "modality": "image"} for uri in image_uris(8)]

    began = time.perf_counter()
    print(f"altclip serve load: {args.checkpoint}, {args.device}, {args.modality} requests of one input each; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"servers: API key {'off' if args.no_auth else 'on (Bearer)'}, metrics {'off' if args.no_metrics else 'on'}")
    print(f"phases stop at {args.requests} requests or {args.seconds:.0f} s; {args.rounds} alternating rounds, "
          "each line the best; clients in this process (asyncio + httpx)")
    batched = f"batched (max {args.max_batch_size}, {args.max_wait_ms:g} ms)"
    runs = [(batched, 1), (batched, args.clients), ("batching off (max 1)", args.clients)]
    best: dict[tuple[str, int], tuple] = {}
    with Server(args, args.max_batch_size) as on, Server(args, 1) as off:
        for _ in range(args.rounds):  # alternate, so that other work on the machine hurts every line alike
            for label, clients in runs:
                result = phase(on if label == batched else off, bodies, clients, args)
                if (label, clients) not in best or result[0] > best[label, clients][0]:
                    best[label, clients] = result
        batches = None if args.no_metrics else on.mean_batch()
    print(f"{'server':<34} {'clients':>7} {'requests':>8} {'seconds':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for (label, clients), (rate, p50, p99, count, wall) in best.items():
        print(f"{label:<34} {clients:>7} {count:>8} {wall:>7.1f} {rate:>8.2f} {p50:>8.0f} {p99:>8.0f}")
    one, many, unbatched = (best[key][0] for key in best)
    print(f"{args.clients} clients / 1 client (one at a time): {many / one:.2f}x throughput (target >= 3x)")
    print(f"{args.clients} clients, batching on / off: {many / unbatched:.2f}x throughput")
    if batches:
        print(f"batched server, all phases: {batches} (its /metrics)")
    print(f"total {time.perf_counter() - began:.0f} s")

if __name__ == "__main__":
    main()
