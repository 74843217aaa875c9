"""AltCLIP in processes that open_clip tools start themselves: a fresh interpreter, open_clip_train
(single process, resume, --lock-image, torchrun with gloo) and the clip_benchmark CLI.

They find AltCLIP through the installed ``altclip_adapters_autoload.pth``; nothing is registered for them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch.testing import assert_close
from transformers import AltCLIPModel

from altclip_adapters.integrations.open_clip import AltCLIPOpenCLIP, save_for_open_clip, save_hf

CAPTIONS = [
    "a photo of a cat",
    "一只狗的照片",
    "猫の写真",
    "ein Foto von einem Hund",
    "una foto de un coche rojo",
    "фотография кошки",
    "고양이 사진",
    "une photo d'un chat",
]
# open_clip_train hands DistributedDataParallel device_ids=[device] also on CPU, which torch rejects;
# this launcher drops them there and then runs open_clip_train unchanged.
CPU_DDP_LAUNCHER = """
import sys
import torch
from torch.nn.parallel import DistributedDataParallel


class CpuDistributedDataParallel(DistributedDataParallel):
    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = device_ids is not None and all(torch.device(d).type == "cpu" for d in device_ids)
        super().__init__(module, device_ids=None if on_cpu else device_ids, **kwargs)


torch.nn.parallel.DistributedDataParallel = CpuDistributedDataParallel
from open_clip_train.main import main

main(sys.argv[1:])
"""


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **env}
    result = subprocess.run(args, check=False, cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def open_clip_dir(tiny_dir, tmp_path_factory):
    """The tiny checkpoint as an open_clip folder: ``--model local-dir:<it>`` in every tool."""
    return save_for_open_clip(tiny_dir, tmp_path_factory.mktemp("open_clip") / "tiny")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    """Generated images with multilingual captions, as open_clip_train's CSV dataset reads them."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.RandomState(0)
    rows = ["filepath\ttitle"]
    for i, caption in enumerate(CAPTIONS):
        path = folder / f"{i}.png"
        Image.fromarray(rng.randint(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(path)
        rows.append(f"{path}\t{caption}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv"


def train(open_clip_dir, csv_file, logs: Path, name: str, *extra: str, launcher: list[str] | None = None):
    """open_clip_train on CPU (logs land in ``logs/<name>``; the default --logs ./logs/ keeps torchrun's
    argument parser, which would take --logs for its --logs-specs, out of the way)."""
    args = [
        "--model",
        f"local-dir:{open_clip_dir}",
        "--train-data",
        str(csv_file),
        "--dataset-type",
        "csv",
        "--csv-img-key",
        "filepath",
        "--csv-caption-key",
        "title",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--lr",
        "5e-3",
        "--wd",
        "0",
        "--warmup",
        "1",
        "--zeroshot-frequency",
        "0",
        "--report-to",
        "",
        "--name",
        name,
        *extra,
    ]
    logs.mkdir(exist_ok=True)
    return run([*(launcher or [sys.executable, "-m", "open_clip_train.main"]), *args], cwd=logs.parent)


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def test_the_pth_file_is_installed_and_cheap():
    files = {str(f) for f in importlib.metadata.files("altclip-adapters")}
    assert {"altclip_adapters_autoload.pth", "_altclip_adapters_autoload.py"} <= files
    code = "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'altclip_adapters')))"
    # only the import hook (a module of os and sys) is loaded at interpreter start
    assert run([sys.executable, "-c", code], cwd=Path.cwd()).stdout.strip() == "['altclip_adapters.integrations._autoload']"


def test_a_fresh_process_sees_altclip(open_clip_dir, tmp_path):
    code = (
        "import open_clip, sys; "
        "print('AltCLIP' in open_clip.list_models(), ('AltCLIP-m18', 'baai') in open_clip.list_pretrained(), "
        "type(open_clip.create_model(sys.argv[1])).__name__)"
    )
    result = run([sys.executable, "-c", code, f"local-dir:{open_clip_dir}"], cwd=tmp_path)
    assert result.stdout.split() == ["True", "True", "AltCLIPOpenCLIP"]


def test_switched_off_then_registered_by_import(open_clip_dir, tmp_path):
    """With the .pth switched off open_clip is plain; ``import altclip_adapters`` registers, and
    ``create_model`` imported from open_clip before that builds AltCLIP."""
    code = (
        "import sys; from open_clip import create_model, list_models; "
        "print('AltCLIP' in list_models()); import altclip_adapters; "
        "print('AltCLIP' in list_models(), type(create_model(sys.argv[1])).__name__)"
    )
    result = run(
        [sys.executable, "-c", code, f"local-dir:{open_clip_dir}"], cwd=tmp_path, ALTCLIP_ADAPTERS_NO_AUTOLOAD="1"
    )
    assert result.stdout.split() == ["False", "True", "AltCLIPOpenCLIP"]


def test_import_altclip_adapters_first_registers_when_open_clip_comes(tmp_path):
    code = (
        "import sys, altclip_adapters; print('open_clip' in sys.modules); "
        "import open_clip; print('AltCLIP-m9' in open_clip.list_models())"
    )
    result = run([sys.executable, "-c", code], cwd=tmp_path, ALTCLIP_ADAPTERS_NO_AUTOLOAD="1")
    assert result.stdout.split() == ["False", "True"]


def test_open_clip_train_fine_tunes_resumes_and_exports(open_clip_dir, csv_file, tmp_path):
    logs = tmp_path / "logs"
    train(open_clip_dir, csv_file, logs, "run", "--epochs", "2", "--val-data", str(csv_file))
    train(open_clip_dir, csv_file, logs, "run", "--epochs", "3", "--val-data", str(csv_file), "--resume", "latest")
    run_dir = logs / "run"
    results = [json.loads(line) for line in (run_dir / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in results] == [1, 2, 3]
    assert results[-1]["clip_val_loss"] < results[0]["clip_val_loss"]
    assert "resuming checkpoint" in (run_dir / "out.log").read_text()

    checkpoint = run_dir / "checkpoints" / "epoch_3.pt"
    model = open_clip.create_model(f"local-dir:{open_clip_dir}")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    open_clip.load_checkpoint(model, str(checkpoint))
    assert not torch.equal(model.text_projection.weight, initial["text_projection.weight"])
    folder = save_hf(model, open_clip.get_tokenizer(f"local-dir:{open_clip_dir}"), tmp_path / "fine-tuned")
    reference = AltCLIPModel.from_pretrained(folder).eval()
    ids = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")(CAPTIONS)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=(ids != 1).long(), pixel_values=pixel_values)
        assert_close(model.encode_text(ids, normalize=True), expected.text_embeds, atol=1e-5, rtol=0)
        assert_close(model.encode_image(pixel_values, normalize=True), expected.image_embeds, atol=1e-5, rtol=0)


def test_open_clip_train_lock_image(open_clip_dir, csv_file, tmp_path):
    train(open_clip_dir, csv_file, tmp_path / "logs", "locked", "--epochs", "1", "--lock-image")
    trained = checkpoint_state(tmp_path / "logs" / "locked" / "checkpoints" / "epoch_1.pt")
    initial = open_clip.create_model(f"local-dir:{open_clip_dir}").state_dict()
    vision = [k for k in initial if k.startswith(("vision.", "visual_projection"))]
    assert vision and all(torch.equal(trained[k], initial[k]) for k in vision)
    assert not torch.equal(trained["text_projection.weight"], initial["text_projection.weight"])


def test_open_clip_train_under_torchrun(open_clip_dir, csv_file, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(CPU_DDP_LAUNCHER)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(launcher)]
    train(
        open_clip_dir,
        csv_file,
        tmp_path / "logs",
        "ddp",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--dist-backend",
        "gloo",
        launcher=torchrun,
    )
    log = (tmp_path / "logs" / "ddp" / "out.log").read_text()
    assert "Running in distributed mode with multiple processes" in log and "total 2" in log
    raw = torch.load(tmp_path / "logs" / "ddp" / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw["state_dict"])
    model = open_clip.create_model(f"local-dir:{open_clip_dir}")
    open_clip.load_checkpoint(model, str(tmp_path / "logs" / "ddp" / "checkpoints" / "epoch_1.pt"))
    assert isinstance(model, AltCLIPOpenCLIP)


def test_clip_benchmark_cli(open_clip_dir, csv_file, tmp_path):
    """Multilingual retrieval (clip_benchmark's xtd10 dataset, read from a local annotation file)."""
    paths = sorted(str(p) for p in csv_file.parent.glob("*.png"))
    annotations = {
        "image_paths": paths,
        "annotations": ["一只猫的照片", "一只狗的照片", "红色汽车", "自行车", "猫", "狗", "车", "人"],
    }
    (tmp_path / "xtd10-zh.json").write_text(json.dumps(annotations, ensure_ascii=False))
    output = tmp_path / "results.json"
    run(
        [
            sys.executable,
            "-m",
            "clip_benchmark.cli",
            "eval",
            "--dataset",
            "xtd10",
            "--language",
            "zh",
            "--dataset_root",
            str(tmp_path),
            "--model",
            f"local-dir:{open_clip_dir}",
            "--pretrained",
            "none",
            "--output",
            str(output),
            "--num_workers",
            "0",
            "--batch_size",
            "4",
            "--recall_k",
            "1",
            "5",
        ],
        cwd=tmp_path,
    )
    results = json.loads(output.read_text())
    assert results["model"] == f"local-dir:{open_clip_dir}" and results["task"] == "zeroshot_retrieval"
    metrics = results["metrics"]
    assert set(metrics) == {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5)}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_example_runs_offline(tmp_path):
    example = Path(__file__).parents[1] / "examples" / "open_clip_zero_shot.py"
    output = run([sys.executable, str(example), "--tiny"], cwd=tmp_path).stdout
    assert "zero-shot:" in output and "retrieval (best image per caption):" in output
    assert "red square: red" in output and re.search(r"'一个绿色的正方形'\s+->", output)
