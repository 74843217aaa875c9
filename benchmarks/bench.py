"""Throughput of altclip_adapters against transformers.AltCLIPModel, in one process, same random weights.

    python benchmarks/bench.py --device cpu                  # 2-core CPU: a few minutes
    python benchmarks/bench.py --device cuda --compile       # one H100/H200: under 5 minutes

Both models load one random checkpoint with BAAI/AltCLIP's tower shapes (XLM-R large + ViT-L/14 at
224; small vocabulary), written once into --checkpoint. Prints images/s or texts/s for the
reference and for ours, the ratio ours/reference, and the fidelity of each fast path against the
fp32 reference (cosine similarity per embedding; the minimum is printed). A first, cheap section
times ``altclip --help`` against ``python -c "import torch"`` (fresh processes). The work folder is a
temporary one, removed at the end, unless --workdir names one to keep; the run ends with its peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from altclip_adapters import AltCLIP
from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.model.tiny import make_checkpoint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRESETS = {  # work per mode: image batch, timed calls per round, alternating rounds, texts, text batch, JPEGs, rounds
    "cpu": {"image_batch": 2, "image_reps": 1, "rounds": 4, "texts": 48, "text_batch": 8, "jpegs": 4, "ref_jpegs": 4, "e2e_rounds": 2},
    "cuda": {"image_batch": 256, "image_reps": 8, "rounds": 3, "texts": 4096, "text_batch": 256, "jpegs": 8192, "ref_jpegs": 1024,
             "e2e_rounds": 1},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, warm, device: torch.device, reps: int = 1):
    """(seconds per call of ``fn``, its last result), after one call of ``warm`` (the same work, maybe smaller)."""
    warm()
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        result = fn()
    sync(device)
    return (time.perf_counter() - start) / reps, result


def compare(ref, ours, warm_ref, warm_ours, device: torch.device, rounds: int, reps: int):
    """Best seconds per call of ``ref`` and of ``ours`` over ``rounds`` alternating rounds (fair on a
    busy machine), and their last results."""
    best = [float("inf"), float("inf")]
    results = [None, None]
    warm_ref()
    warm_ours()
    for _ in range(rounds):
        for k, fn in enumerate((ref, ours)):
            seconds, results[k] = timed(fn, lambda: None, device, reps)
            best[k] = min(best[k], seconds)
    return best[0], best[1], results[0], results[1]


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1).min().item()


def row(name: str, ours: float, ref: float, unit: str, fidelity: str = "") -> None:
    print(f"  {name:<44} ref {ref:>9.2f} {unit}   ours {ours:>9.2f} {unit}   ours/ref {ours / ref:5.2f}x  {fidelity}")


def load_reference(folder: Path, device: torch.device, dtype: torch.dtype):
    from transformers import AltCLIPModel

    return AltCLIPModel.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device).eval()


# start-up of the command line, against importing torch, each in a fresh process ---------------------
STARTUP = {  # what each fresh interpreter runs; it reports its peak resident memory (KiB) on stderr at exit
    "altclip --help": "import sys\nfrom altclip_adapters.cli import main\nsys.argv = ['altclip', '--help']\nmain()",
    "import torch": "import torch",
}
STARTUP_PEAK = "import atexit, resource, sys\natexit.register(lambda: print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"


def run_fresh(code: str) -> tuple[float, int]:
    """Wall seconds and peak resident KiB of a fresh ``python -c code``."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", STARTUP_PEAK + code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=True)
    seconds = time.perf_counter() - start
    return seconds, int(done.stderr.split("peak ")[-1])


def bench_startup(rounds: int = 3) -> None:
    print(f"start-up: `altclip --help` against `python -c \"import torch\"` (fresh process each, best of {rounds})")
    best = {name: (float("inf"), 0) for name in STARTUP}
    for _ in range(rounds):  # alternating, so that other work on the machine hurts both alike
        for name, code in STARTUP.items():
            seconds, peak = run_fresh(code)
            best[name] = (min(best[name][0], seconds), max(best[name][1], peak))
    (ours, ours_peak), (ref, ref_peak) = best["altclip --help"], best["import torch"]
    print(f"  {'altclip --help (vs import torch)':<40} ref {ref:>7.2f} s    ours {ours:>7.2f} s    ours/ref {ours / ref:5.2f}x "
          f"(target <= 0.30x)")
    print(f"  {'  peak memory':<40} ref {ref_peak / 2**10:>7.0f} MiB  ours {ours_peak / 2**10:>7.0f} MiB  "
          f"ours/ref {ours_peak / ref_peak:5.2f}x")


# load time and peak memory, each measured in a fresh process ---------------------------------------
def probe_load(which: str, folder: str) -> None:
    """Run in a child process: load once, then read every weight once (as a first forward pass does;
    a memory-mapped load defers its reading to then). Prints seconds and peak resident memory growth;
    imports (done at module level) are not counted."""
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base

    base = rss()
    start = time.perf_counter()
    model = AltCLIP.from_pretrained(folder) if which == "ours" else load_reference(Path(folder), torch.device("cpu"), torch.float32)
    loaded, loaded_peak = time.perf_counter() - start, peak()
    with torch.no_grad():
        for param in model.parameters():
            param.sum()
    print(json.dumps({"load": loaded, "load_peak": loaded_peak, "ready": time.perf_counter() - start, "ready_peak": peak()}))


def bench_load(folder: Path) -> None:
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(f"checkpoint load (CPU, fp32, fresh process each; weights {size / 2**30:.2f} GiB on disk)")
    results = {}
    for which in ("ref", "ours"):
        out = subprocess.run(
            [sys.executable, __file__, "--probe-load", which, "--checkpoint", str(folder)],
            capture_output=True, text=True, check=True,
        )
        results[which] = json.loads(out.stdout.strip().splitlines()[-1])
    ref, ours = results["ref"], results["ours"]
    for key, label in (("load", "from_pretrained"), ("ready", "from_pretrained + read all weights")):
        print(f"  {label:<40} ref {ref[key]:>7.2f} s    ours {ours[key]:>7.2f} s    ours/ref {ours[key] / ref[key]:5.2f}x (lower is better)")
        peak = f"{key}_peak"
        print(f"  {'  peak memory growth':<40} ref {ref[peak] / 2**30:>7.2f} GiB  ours {ours[peak] / 2**30:>7.2f} GiB  "
              f"ours/weights {ours[peak] / size:4.2f}x (ref/weights {ref[peak] / size:4.2f}x)")


# towers ------------------------------------------------------------------------------------------
def mixed_texts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Token id lists of 6 to 40 tokens (<s> ... </s>), in random order."""
    rng = np.random.default_rng(seed)
    return [[0, *rng.integers(4, vocab - 1, int(n) - 2).tolist(), 2] for n in rng.integers(6, 41, count)]


def padded_tokens(lengths: list[int], batch: int) -> int:
    """Tokens computed when texts of ``lengths`` run in this order, each batch padded to its longest."""
    return sum(len(lengths[i : i + batch]) * max(lengths[i : i + batch]) for i in range(0, len(lengths), batch))


def reference_texts(ref, ids: list[list[int]], batch: int, device: torch.device) -> torch.Tensor:
    """The reference's way: batches in input order, each padded to its longest text."""
    out = []
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        longest = max(map(len, chunk))
        input_ids = torch.tensor([t + [1] * (longest - len(t)) for t in chunk], device=device)
        with torch.inference_mode():
            out.append(ref.get_text_features(input_ids=input_ids, attention_mask=(input_ids != 1).long()).pooler_output)
    return torch.cat(out)


def image_features(ref, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return ref.get_image_features(pixel_values=pixels).pooler_output


def bench_towers(args, folder: Path, device: torch.device, preset: dict) -> None:
    torch.manual_seed(0)
    batch, reps, rounds, text_batch = preset["image_batch"], preset["image_reps"], preset["rounds"], preset["text_batch"]
    config = AltCLIP.from_pretrained(folder).config
    pixels = torch.randn(batch, 3, config.vision.image_size, config.vision.image_size, device=device)
    ids = mixed_texts(preset["texts"], config.text.vocab_size)
    small = slice(None) if device.type == "cuda" else slice(0, 1)  # CPU warm-ups: one item

    def image_fns(ref, embedder, x):
        def ours(part=slice(None)):  # the embedder's runtime (torch or OpenVINO) on normalised pixels
            with torch.inference_mode():
                return embedder._encode_image(x[part], normalize=True)

        return (lambda: F.normalize(image_features(ref, x), dim=-1), ours, lambda: image_features(ref, x[small]), lambda: ours(small))

    def text_fns(ref, embedder):
        def ours() -> torch.Tensor:
            out = torch.empty(len(ids), embedder.model.config.projection_dim)
            for positions, features in embedder.iter_tokens(ids):
                out[positions] = features
            return out

        return (lambda: F.normalize(reference_texts(ref, ids, text_batch, device), dim=-1), ours,
                lambda: reference_texts(ref, ids[small], text_batch, device), lambda: list(embedder.iter_tokens(ids[small])))

    def embedder_rows(label: str, embedder: Embedder, ref, x) -> tuple[float, float]:
        """An image row and a text row for ``embedder``, each timed in alternating rounds with ``ref``; returns
        both speedups over ``ref``."""
        ref_s, s, _, images = compare(*image_fns(ref, embedder, x), device, rounds, reps)
        row(f"image tower {label}, batch {batch}", batch / s, batch / ref_s, "img/s", f"cos {min_cosine(images, truth['image']):.6f}")
        ref_text_s, text_s, _, texts = compare(*text_fns(ref, embedder), device, rounds, 1)
        row(f"text tower {label}, batch {text_batch}", len(ids) / text_s, len(ids) / ref_text_s, "txt/s",
            f"cos {min_cosine(texts, truth['text']):.6f}")
        return ref_s / s, ref_text_s / text_s

    lengths = [len(t) for t in ids]
    ref_tokens, ours_tokens = padded_tokens(lengths, text_batch), padded_tokens(sorted(lengths, reverse=True), text_batch)
    work = (f"tokens computed: ref {ref_tokens}, ours {ours_tokens} ({ref_tokens / ours_tokens:.2f}x less), "
            f"without padding {sum(lengths)}")
    print(f"towers ({device.type}); cos: min cosine similarity per embedding to the fp32 reference")
    truth = {}
    for name in args.dtype:
        dtype = DTYPES[name]
        x = pixels.to(dtype)
        ref = load_reference(folder, device, dtype)
        embedder = Embedder(AltCLIP.from_pretrained(folder), device=device, dtype=dtype, batch_size=text_batch)
        ref_s, ours_s, ref_images, images = compare(*image_fns(ref, embedder, x), device, rounds, reps)
        ref_text_s, ours_text_s, ref_texts, texts = compare(*text_fns(ref, embedder), device, rounds, 1)
        if not truth and dtype == torch.float32:
            truth = {"image": ref_images, "text": ref_texts}
        elif not truth:
            ref32 = load_reference(folder, device, torch.float32)
            truth = {"image": F.normalize(image_features(ref32, pixels), dim=-1),
                     "text": F.normalize(reference_texts(ref32, ids, text_batch, device), dim=-1)}
            del ref32
        row(f"image tower {name}, batch {batch}", batch / ours_s, batch / ref_s, "img/s", f"cos {min_cosine(images, truth['image']):.6f}")
        row(f"text tower {name}, 6-40 tok, batch {text_batch}", len(ids) / ours_text_s, len(ids) / ref_text_s, "txt/s",
            f"cos {min_cosine(texts, truth['text']):.6f}  {work}")
        if device.type == "cpu" and dtype == torch.float32:  # int8 against the same fp32 reference, interleaved
            embedder_rows("torch int8", Embedder(AltCLIP.from_pretrained(folder), runtime="torch", int8=True, batch_size=text_batch), ref, x)
            torch_speedups = (ref_s / ours_s, ref_text_s / ours_text_s)  # each against the reference of its own rounds
            bench_openvino(ref, folder, x, ids, text_batch, truth, embedder_rows, torch_speedups, rounds, reps)
        if args.compile and name == args.dtype[0]:
            ref_c, ours_c = torch.compile(ref.get_image_features), torch.compile(embedder.model.encode_image)
            with torch.inference_mode():
                ref_c_s, ours_c_s, _, out = compare(lambda: ref_c(pixel_values=x), lambda: ours_c(x), lambda: ref_c(pixel_values=x),
                                                    lambda: ours_c(x), device, rounds, reps)
            fidelity = f"cos {min_cosine(F.normalize(out, dim=-1), truth['image']):.6f}"
            row(f"image tower {name} compiled", batch / ours_c_s, batch / ref_c_s, "img/s", fidelity)
            row(f"image tower {name} compiled vs ref eager", batch / ours_c_s, batch / ref_s, "img/s", fidelity)
        del ref, embedder
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_openvino(ref, folder: Path, x, ids, text_batch: int, truth: dict, embedder_rows, torch_speedups: tuple, rounds: int,
                   reps: int) -> None:
    """CPU rows per OpenVINO precision (f32, bf16, int8 weights; ours, through the Embedder) against the same fp32
    reference, then plain
    OpenVINO bf16 of the reference (``ov.convert_model`` of transformers' towers: what a user gets without us),
    and the ratios of our default CPU path to it and to our torch fp32. On a busy machine the reference's own rate
    drifts between rows: each ratio divides two rows' speedups over the reference timed in their own rounds."""
    from altclip_adapters.inference.runtimes import cpu_has_bf16, openvino_available

    if not openvino_available():
        print("  (OpenVINO not installed: pip install 'altclip-adapters[openvino]' for its rows)")
        return
    device, batch = torch.device("cpu"), x.shape[0]
    rates = {}
    for precision in ("default", "f32", "bf16", "int8") if cpu_has_bf16() else ("default", "int8"):
        options = {"int8": True} if precision == "int8" else {} if precision == "default" else {
            "dtype": torch.bfloat16 if precision == "bf16" else torch.float32}
        embedder = Embedder(AltCLIP.from_pretrained(folder), runtime="openvino", batch_size=text_batch, **options)
        if embedder.fidelity:
            print(f"  openvino {precision}: fidelity measured at conversion (min cos to f32 on probe inputs) {embedder.fidelity}")
        label = f"openvino default ({embedder.precision})" if precision == "default" else f"openvino {embedder.precision}"
        rates[precision] = embedder_rows(label, embedder, ref, x)
        del embedder
    default = rates["default"]
    plain = plain_openvino(ref, x, ids, text_batch)
    ref_s, plain_s, _, images = compare(lambda: F.normalize(image_features(ref, x), dim=-1), plain["images"],
                                        lambda: image_features(ref, x[:1]), lambda: plain["images"](slice(0, 1)), device, rounds, reps)
    row(f"image tower plain OpenVINO {plain['precision']} (reference)", batch / plain_s, batch / ref_s, "img/s",
        f"cos {min_cosine(images, truth['image']):.6f}")
    ref_text_s, plain_text_s, _, texts = compare(lambda: F.normalize(reference_texts(ref, ids, text_batch, device), dim=-1),
                                                 plain["texts"], lambda: reference_texts(ref, ids[:1], text_batch, device),
                                                 lambda: plain["texts"](ids[:1]), device, rounds, 1)
    row(f"text tower plain OpenVINO {plain['precision']} (reference)", len(ids) / plain_text_s, len(ids) / ref_text_s, "txt/s",
        f"cos {min_cosine(texts, truth['text']):.6f}")
    plain_speedups = (ref_s / plain_s, ref_text_s / plain_text_s)
    ratio = lambda rate, base: " / ".join(f"{a / b:.2f}x" for a, b in zip(rate, base))
    print(f"  ratios (images / texts) of our default CPU path: {ratio(default, plain_speedups)} plain OpenVINO, "
          f"{ratio(default, torch_speedups)} our torch fp32; openvino int8 weights: {ratio(rates['int8'], plain_speedups)} "
          "plain OpenVINO")


def plain_openvino(ref, x, ids, text_batch: int) -> dict:
    """transformers' towers converted as a user would (``ov.convert_model`` with example inputs, dynamic shapes),
    compiled at bf16 where the CPU has it: ``images(part)`` and ``texts(ids)`` give normalised embeddings."""
    import warnings

    import openvino as ov

    from altclip_adapters.inference.runtimes import cpu_has_bf16, openvino_core

    class Image(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ref = ref

        def forward(self, pixel_values):
            return self.ref.get_image_features(pixel_values=pixel_values).pooler_output

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ref = ref

        def forward(self, input_ids, attention_mask):
            return self.ref.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    precision = "bf16" if cpu_has_bf16() else "f32"
    example = torch.tensor([ids[0]])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        image = ov.convert_model(Image().eval(), example_input=x[:1].float(), input=[-1, *x.shape[1:]])
        text = ov.convert_model(Text().eval(), example_input=(example, torch.ones_like(example)), input=[[-1, -1], [-1, -1]])
    core, config = openvino_core(), {"INFERENCE_PRECISION_HINT": precision}
    image, text = core.compile_model(image, "CPU", config), core.compile_model(text, "CPU", config)

    def images(part=slice(None)):
        return F.normalize(torch.from_numpy(image(x[part].float().numpy())[0].copy()), dim=-1)

    def texts(token_ids=ids):
        out = []
        for start in range(0, len(token_ids), text_batch):
            chunk = token_ids[start : start + text_batch]
            longest = max(map(len, chunk))
            input_ids = np.array([t + [1] * (longest - len(t)) for t in chunk])
            out.append(torch.from_numpy(text([input_ids, (input_ids != 1).astype(np.int64)])[0].copy()))
        return F.normalize(torch.cat(out), dim=-1)

    return {"images": images, "texts": texts, "precision": precision}


# end to end: a folder of JPEGs -> embeddings -------------------------------------------------------
def write_jpeg(path: Path, seed: int) -> None:
    """One photo-like 640x480 JPEG: smooth colour gradients plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    a, b, c = rng.uniform(0.2, 2.0, 3)
    base = np.stack([xx * a / 640, yy * b / 480, (xx + yy) * c / 1120], -1) * 200
    noisy = base + rng.normal(0, 12, base.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_jpegs(folder: Path, count: int) -> list[Path]:
    """``count`` distinct JPEGs in ``folder``, written once (in parallel)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(write_jpeg, [paths[i] for i in missing], missing, chunksize=64))
    return paths


def bench_end_to_end(args, folder: Path, device: torch.device, preset: dict) -> None:
    from transformers import CLIPImageProcessor

    dtype = DTYPES[args.dtype[0]]
    paths = write_jpegs(Path(args.workdir) / "jpegs", max(preset["jpegs"], preset["ref_jpegs"]))
    print(f"end to end: folder of 640x480 JPEGs -> normalised embeddings ({args.dtype[0]}, {device.type})")
    ref = load_reference(folder, device, dtype)
    processor = CLIPImageProcessor.from_pretrained(folder)
    batch = preset["image_batch"]
    ref_paths = paths[: preset["ref_jpegs"]]

    def reference() -> torch.Tensor:  # one process: decode, CLIPImageProcessor, model, batch by batch
        out = []
        for start in range(0, len(ref_paths), batch):
            images = [Image.open(p).convert("RGB") for p in ref_paths[start : start + batch]]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device, dtype)
            out.append(F.normalize(image_features(ref, pixels), dim=-1))
        return torch.cat(out)

    def warm_ref() -> None:
        size = processor.crop_size["height"]
        image_features(ref, torch.zeros(1, 3, size, size, device=device, dtype=dtype))

    ours_paths = paths[: preset["jpegs"]]
    warm = ours_paths[:batch] if device.type == "cuda" else ours_paths[:1]
    # GPU: torch, then nvJPEG; CPU: torch at --dtype, then the default runtime (auto: OpenVINO bf16 on a bf16 CPU)
    variants = [(True, {"dtype": dtype})] if device.type == "cuda" else [(False, {"runtime": "auto"})]
    speedups = []
    for on_device, options in [(False, {"dtype": dtype}), *variants]:
        embedder = Embedder(AltCLIP.from_pretrained(folder), device=device, batch_size=batch, num_workers=args.workers,
                            decode_on_device=on_device, **options)
        ref_s, ours_s, truth, ours = compare(reference, lambda: embedder.images(ours_paths), warm_ref,
                                             lambda: embedder.images(warm), device, preset["e2e_rounds"], 1)
        fidelity = min_cosine(ours[: len(ref_paths)], truth)
        label = (f"JPEGs -> embeddings, {embedder.runtime} {embedder.precision}, {embedder.num_workers} workers"
                 + (", nvJPEG" if on_device else ""))
        row(label, len(ours_paths) / ours_s, len(ref_paths) / ref_s, "img/s", f"cos to ref {args.dtype[0]} {fidelity:.6f}")
        speedups.append((len(ours_paths) / ours_s) / (len(ref_paths) / ref_s))
    print(f"  ratio of the second row to the first (each against the reference of its own rounds): {speedups[1] / speedups[0]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", choices=list(DTYPES), help="default: fp32 on cpu, bf16 fp16 on cuda")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd image towers (both models, first dtype)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers for the JPEG pipeline")
    parser.add_argument("--checkpoint", default=None, help="random full-shape checkpoint folder (made if missing, kept)")
    parser.add_argument("--perturbation", type=float, default=0.05,
                        help="noise added to every weight of a new random checkpoint (altclip_adapters.model.tiny; 0: transformers' init)")
    parser.add_argument("--workdir", default=None,
                        help="folder for the checkpoint and JPEGs, kept for the next run (default: a temporary folder, removed)")
    parser.add_argument("--only", nargs="+", choices=["startup", "load", "towers", "e2e"],
                        default=["startup", "load", "towers", "e2e"])
    parser.add_argument("--probe-load", choices=["ours", "ref"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_load:
        probe_load(args.probe_load, args.checkpoint)
        return
    with tempfile.TemporaryDirectory(prefix="altclip-bench-") as tmp:  # ~2.3 GiB of checkpoint and JPEGs
        args.workdir = args.workdir or tmp
        failed = run_sections(args)
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"peak memory: this process {self_peak:.2f} GiB, largest child process {children_peak:.2f} GiB")
    sys.exit(1 if failed else 0)


def run_sections(args) -> list[str]:
    """Run the sections ``args.only`` names; returns those that failed."""
    device = torch.device(args.device)
    args.dtype = args.dtype or (["fp32"] if device.type == "cpu" else ["bf16", "fp16"])
    preset = PRESETS[device.type]
    folder = Path(args.checkpoint or Path(args.workdir) / "full")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"transformers {transformers.__version__} {gpu}")
    print(f"threads {torch.get_num_threads()}, preset {preset}")
    started = time.perf_counter()

    def checkpoint() -> Path:
        if not (folder / "config.json").is_file():
            print(f"writing a random checkpoint with BAAI/AltCLIP shapes to {folder} ...", flush=True)
            make_checkpoint(folder, "full", perturbation=args.perturbation)
        return folder

    sections = {"startup": bench_startup, "load": lambda: bench_load(checkpoint()),
                "towers": lambda: bench_towers(args, checkpoint(), device, preset),
                "e2e": lambda: bench_end_to_end(args, checkpoint(), device, preset)}
    failed = []
    for name in args.only:
        try:  # an unattended run reports a failing part and goes on with the others
            sections[name]()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"  [{name} done at {time.perf_counter() - started:.0f} s]", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return failed


if __name__ == "__main__":
    main()
