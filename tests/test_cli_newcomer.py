"""What a newcomer meets first: a fast, self-explaining ``altclip`` command (start-up without torch, help with
defaults and examples, Ctrl-C, wrong architectures, an unreachable hub, what a run skipped)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from altclip_adapters import cli

from altclip_adapters.model import registry
from altclip_adapters.cli._common import HelpFormatter

HEAVY = ("torch", "transformers", "timm", "open_clip", "sentence_transformers", "ray", "fastapi", "faiss")
SUBCOMMANDS = [module.__name__.rsplit(".", 1)[1] for module in cli.COMMANDS]
# Runs the command in a fresh interpreter, then prints its exit status and the heavy modules it imported.
PROBE = """\
import json, sys
from altclip_adapters.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as e:
    status = e.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("PROBE " + json.dumps({{"status": status, "heavy": heavy}}))
"""


def probe(*argv: str, env: dict | None = None) -> tuple[dict, subprocess.CompletedProcess]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})}, check=False,
    )
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    return json.loads(line.removeprefix("PROBE ")), done


def subparsers() -> dict:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return action.choices


# 1. start-up ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in SUBCOMMANDS], ids=str)
def test_help_imports_nothing_heavy(argv):
    result, done = probe(*argv)
    assert result == {"status": 0, "heavy": []}, done.stderr
    assert "examples:" in done.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "{tmp}/missing", "--out", "{tmp}/x.npy"], "no such file or folder: {tmp}/missing"),
        (["embed", "{tmp}/missing.txt", "--out", "{tmp}/x.npy"], "no such file or folder: {tmp}/missing.txt"),
        (["embed", "{tmp}/lines.txt", "--out", "{tmp}/x.csv"], "--out must end in .npy or .parquet"),
        (["embed", "{tmp}/lines.txt", "--out", "{tmp}/x.npy", "--model", "{tmp}/no-model"], "not a local folder"),
        (["search", "{tmp}/missing.npy", "cat"], "no such index file"),
        (["demo", "--model", "{tmp}/no-model"], "not a local folder, a registry name"),
        (["convert", "{tmp}/missing", "--to", "baai", "--out", "{tmp}/out"], "not a local folder, a registry name"),
        (["convert", "{tmp}/lines.txt", "--to", "baai", "--out", "{tmp}/out"], "needs --arch"),
        (["convert", "{tmp}/lines.txt", "--arch", "ViT-B-32", "--to", "baai", "--out", "{tmp}/out"], "--arch must be"),
    ],
)
def test_bad_paths_fail_in_one_line_before_anything_heavy(argv, message, tmp_path):
    (tmp_path / "lines.txt").write_text("a cat\n")
    result, done = probe(*[a.format(tmp=tmp_path) for a in argv])
    assert result == {"status": 1, "heavy": []}, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("altclip: error: ")
    assert message.format(tmp=tmp_path) in done.stderr


@pytest.mark.parametrize(
    "argv", [[], ["embed"], ["embed", "x.txt"], ["search", "x.npy", "cat", "-k", "0"], ["embed", "x.txt", "--out", "x.npy",
             "--batch-size", "0"], ["convert", "AltCLIP", "--to", "onnx", "--out", "x"]], ids=str,
)
def test_usage_errors_exit_2_before_anything_heavy(argv):
    result, done = probe(*argv)
    assert result == {"status": 2, "heavy": []}, done.stderr
    assert done.stderr.splitlines()[-1].startswith("altclip")


# 2. help -----------------------------------------------------------------------------------------------------
def test_every_option_says_what_it_does_and_its_default():
    formatter = HelpFormatter("altclip")
    for name, parser in subparsers().items():
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help, f"altclip {name} {action.option_strings or action.dest} has no help"
            flag = action.nargs == 0
            if action.option_strings and not flag and not action.required:
                assert "default" in formatter._get_help_string(action), f"altclip {name} {action.option_strings}"


def test_every_subcommand_ends_with_examples_that_parse():
    for name, parser in subparsers().items():
        assert parser.epilog and parser.epilog.startswith("examples:\n"), name
        examples = [line.strip() for line in parser.epilog.splitlines() if line.startswith("  altclip ")]
        assert examples, name
        for example in examples:
            argv = shlex.split(example, comments=True)[1:]
            assert argv[0] == name
            cli.build_parser().parse_args(argv)  # a usage error would exit


def test_search_and_demo_list_only_options_that_apply():
    commands = subparsers()
    bulk_only = ("--decode-on-device", "--workers", "--batch-size", "--compile", "--int8")  # one query, three pictures
    for name, options in (("search", bulk_only), ("demo", (*bulk_only, "--max-image-pixels"))):
        text = commands[name].format_help()
        for option in options:
            assert option not in text, (name, option)
    embed = commands["embed"].format_help()
    assert "--decode-on-device" in embed and "--batch-size" in embed and "(default: 256)" in embed


# 3. Ctrl-C ---------------------------------------------------------------------------------------------------
def test_ctrl_c_during_embed_is_one_line_exit_130_and_keeps_what_it_saved(tiny_dir, tmp_path):
    import numpy as np

    from altclip_adapters.collection.worker import SAVE_ITEMS

    lines = tmp_path / "lines.txt"
    count = 8 * SAVE_ITEMS  # the first save comes long before the end, however fast the machine
    lines.write_text("".join(f"caption number {i}\n" for i in range(count)), encoding="utf-8")
    out = tmp_path / "texts.npy"
    argv = ["embed", str(lines), "--out", str(out), "--model", str(tiny_dir), "--quiet"]
    process = subprocess.Popen(
        [sys.executable, "-m", "altclip_adapters.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    state = tmp_path / ".texts.npy.altclip"  # the hidden embedding folder the file is made from
    deadline = time.monotonic() + 300
    while not any((state / "altclip_run").rglob("*.*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stdout == "" and "Traceback" not in stderr
    (line,) = stderr.splitlines()
    match = re.fullmatch(rf"altclip: interrupted: ([\d,]+) of {count:,} items embedded are kept in (.+) \(the state of "
                         r"texts.npy\); run the same command to resume", line)
    assert match and match[2] == str(state), line
    on_disk = []
    for part in (state / "altclip_run" / "partial").glob("*.npz"):
        with np.load(part) as data:
            on_disk += data["text_done"].tolist()
    on_disk += [f"row {i}" for r in (state / "altclip_run" / "shards").glob("*.json") for i in range(json.loads(r.read_text())["rows"])]
    assert int(match[1].replace(",", "")) == len(on_disk) and 0 < len(on_disk) < count
    assert not out.exists()  # the rerun resumes: see test_collections.py's test_stopped_mid_shard_...


@pytest.mark.parametrize(
    "name, argv",
    [("demo", []), ("embed", ["x.txt", "--out", "x.npy"]), ("search", ["x.npy", "q"]),
     ("convert", ["AltCLIP", "--to", "baai", "--out", "x"])],
)
def test_ctrl_c_in_any_command_is_one_line_and_exit_130(name, argv, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(getattr(cli, name), "run", interrupted)
    assert cli.main([name, *argv]) == 130
    assert capsys.readouterr().err == "altclip: interrupted\n"


# 4. wrong architecture ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def epoch_3(tiny_dir, tmp_path_factory):
    """An open_clip_train checkpoint of the tiny architecture (as test_cli's training checkpoint), and its folder."""
    import open_clip

    root = tmp_path_factory.mktemp("epoch")
    assert cli.main(["convert", str(tiny_dir), "--to", "open_clip", "--out", str(root / "openclip")]) == 0
    model = open_clip.create_model(f"local-dir:{root / 'openclip'}")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, root / "epoch_3.pt")
    return root / "epoch_3.pt", root / "openclip"


def test_wrong_arch_is_one_line_naming_tensors_and_shapes(epoch_3, tmp_path, capsys):
    checkpoint, _ = epoch_3
    argv = ["convert", str(checkpoint), "--arch", "AltCLIP", "--to", "baai", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"altclip: error: {checkpoint} does not fit --arch AltCLIP: ")
    # which tensors, both shapes (the tiny vocabulary and width against XLM-R large's), and no fitting card
    assert re.search(r"\d+ tensors of another shape, \d+ missing", line)
    assert re.search(r"text\.encoder\.embeddings\.word_embeddings\.weight is \[\d+, 32\] in the file, "
                     r"\[250002, 1024\] in the model", line)
    assert "no registry architecture" in line and "local-dir:FOLDER" in line
    assert "initialized randomly" not in captured.err and not (tmp_path / "out").exists()


def test_wrong_arch_names_the_arch_that_fits(tmp_path, capsys):
    with torch.device("meta"):  # AltCLIP-m18's shapes without its 4.8 GB: a checkpoint of meta tensors
        from altclip_adapters.model.core import AltCLIP

        state = AltCLIP(registry.config("AltCLIP-m18")).state_dict()
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "epoch_1.pt")
    argv = ["convert", str(tmp_path / "epoch_1.pt"), "--arch", "AltCLIP", "--to", "baai", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "text.transformation.weight is [1024, 1024] in the file, [768, 1024] in the model" in line
    assert line.endswith("; it fits --arch AltCLIP-m18")


def test_an_open_clip_folder_whose_weights_do_not_fit_its_config(epoch_3, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    _, folder = epoch_3
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    weights = load_file(broken / "open_clip_model.safetensors")
    weights["text_projection.weight"] = torch.zeros(8, 24)
    save_file(weights, broken / "open_clip_model.safetensors")
    assert cli.main(["convert", str(broken), "--to", "baai", "--out", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "text_projection.weight is [8, 24] in the file, [16, 24] in the model" in line


def test_a_baai_folder_whose_weights_do_not_fit_its_config(tiny_dir, m18_dir, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in tiny_dir.iterdir():
        (mixed / path.name).write_bytes(path.read_bytes())
    (mixed / "config.json").write_bytes((m18_dir / "config.json").read_bytes())
    assert cli.main(["convert", str(mixed), "--to", "open_clip", "--out", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "does not match the AltCLIP architecture its config describes" in line and "missing (" in line


# 5. an unreachable hub ---------------------------------------------------------------------------------------
def unreachable_hub(tmp_path) -> dict:
    """The hub at a closed local port, nothing cached, and no HF_HUB_OFFLINE."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "NO_PROXY": "127.0.0.1"}


def test_an_unreachable_hub_fails_fast_in_one_line(tmp_path):
    code = (
        "import time\nfrom altclip_adapters.model.files import resolve_checkpoint\nstart = time.monotonic()\n"
        "try:\n    resolve_checkpoint('AltCLIP')\nexcept FileNotFoundError as e:\n"
        "    print(f'{time.monotonic() - start:.2f}', e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=unreachable_hub(tmp_path), capture_output=True, text=True,
                          timeout=120, check=True)
    seconds, message = done.stdout.strip().split(" ", 1)
    assert float(seconds) < 5  # huggingface_hub alone retries for ~18 s on a refused connection, ~50 s on a dead route
    assert "\n" not in message and message.startswith("BAAI/AltCLIP (revision main) is not in the Hugging Face cache")
    assert "hub is out of reach (127.0.0.1:9: " in message and "local checkpoint folder" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_the_cli_says_so_in_one_line(tmp_path):
    (tmp_path / "lines.txt").write_text("a cat\n")
    argv = ["embed", str(tmp_path / "lines.txt"), "--out", str(tmp_path / "x.npy"), "--model", "AltCLIP-m9"]
    done = subprocess.run([sys.executable, "-m", "altclip_adapters.cli", *argv], env=unreachable_hub(tmp_path),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("altclip: error: BAAI/AltCLIP-m9 (revision main) is not in the Hugging Face cache")


# 7. what a run skipped ---------------------------------------------------------------------------------------
def test_the_summary_counts_blank_lines(tiny_dir, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("a cat\n\n一只狗\n   \n猫\nein Hund\nune voiture\n", encoding="utf-8")  # 7 lines, 2 blank
    out = tmp_path / "lines.npy"
    assert cli.main(["embed", str(lines), "--out", str(out), "--model", str(tiny_dir), "--quiet"]) == 0
    assert capsys.readouterr().out == f"wrote 5 text embeddings to {out}; 2 blank lines skipped\n"
    lines.write_text("a cat\n\none more\n", encoding="utf-8")
    assert cli.main(["embed", str(lines), "--out", str(tmp_path / "two.npy"), "--model", str(tiny_dir), "--quiet"]) == 0
    assert capsys.readouterr().out.endswith("; 1 blank line skipped\n")
