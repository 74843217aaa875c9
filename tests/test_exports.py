"""Every folder we write holds the BAAI/AltCLIP file set, with the usual file modes (issue 10, kind 8)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from conftest import TEXTS
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from altclip_adapters import AltCLIP, cli
from altclip_adapters.model.files import sentencepiece_model
from altclip_adapters.model.tiny import CORPUS

BAAI_FILES = {
    "config.json", "preprocessor_config.json", "sentencepiece.bpe.model", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json", "model.safetensors",
}


def write_core(source: Path, out: Path) -> None:
    AltCLIP.from_pretrained(source).save_pretrained(out)


def write_sentence_transformers(source: Path, out: Path) -> None:
    from altclip_adapters.integrations.sentence_transformers import load

    load(source).save(str(out))


def write_checkpoint_from_sentence_transformers(source: Path, out: Path) -> None:
    from altclip_adapters.integrations.sentence_transformers import load, save_checkpoint

    save_checkpoint(load(source), out)


def write_native(source: Path, out: Path) -> None:
    from altclip_adapters.integrations.sentence_transformers import export_native

    export_native(source, out)


def write_from_open_clip(source: Path, out: Path) -> None:
    import open_clip

    from altclip_adapters.integrations.open_clip import save_for_open_clip, save_hf

    name = f"local-dir:{save_for_open_clip(source, out.with_name(out.name + '-open_clip'))}"
    save_hf(open_clip.create_model(name), open_clip.get_tokenizer(name), out)


def write_with_cli(source: Path, out: Path) -> None:
    assert cli.main(["convert", str(source), "--to", "baai", "--out", str(out)]) == 0


WRITERS = [write_core, write_sentence_transformers, write_checkpoint_from_sentence_transformers, write_native,
           write_from_open_clip, write_with_cli]


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("writer", WRITERS, ids=lambda writer: writer.__name__)
def test_written_folders_hold_the_baai_files_with_the_umask_modes(writer, tiny_dir, tmp_path, umask):
    out = tmp_path / "out"
    writer(tiny_dir, out)
    assert BAAI_FILES <= {path.name for path in out.iterdir()}
    modes = {str(path.relative_to(out)): path.stat().st_mode & 0o777 for path in out.rglob("*")}
    expected = {name: (0o777 if (out / name).is_dir() else 0o666) & ~umask for name in modes}
    assert modes == expected
    assert AutoTokenizer.from_pretrained(out)(TEXTS)["input_ids"] == AutoTokenizer.from_pretrained(tiny_dir)(TEXTS)["input_ids"]


def fairseq_ids(processor: spm.SentencePieceProcessor, text: str) -> list[int]:
    """What XLM-R's slow tokenizer does with sentencepiece ids: <unk> 0 -> 3, pieces i -> i + 1, within <s> ... </s>."""
    return [0] + [3 if i == 0 else i + 1 for i in processor.encode(text)] + [2]


@pytest.fixture(scope="module")
def written(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("written")
    write_core(tiny_dir, out)
    return out


@pytest.fixture(scope="module")
def written_tokenizer(written):
    return AutoTokenizer.from_pretrained(written)


@pytest.fixture(scope="module")
def rebuilt(tiny_dir, tmp_path_factory) -> Path:
    """A checkpoint without sentencepiece.bpe.model (as transformers 5 saves one), written again by us."""
    source = tmp_path_factory.mktemp("without_sentencepiece")
    for path in tiny_dir.iterdir():
        if path.name != "sentencepiece.bpe.model":
            shutil.copy(path, source / path.name)
    out = tmp_path_factory.mktemp("rebuilt")
    write_core(source, out)
    return out


CHARACTERS = sorted(set("".join(CORPUS))) + [" ", "\t", "\n", "\u3000", "ﬁ", "Ａ", "é", "Z", "9", "!"]


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(CHARACTERS + ["\u0301"]), max_size=40))
def test_the_written_sentencepiece_models_equal_the_original(written, rebuilt, tiny_dir, text):
    """Copied, or rebuilt from tokenizer.json, the model gives the original's ids (combining marks included)."""
    original = spm.SentencePieceProcessor(model_file=str(tiny_dir / "sentencepiece.bpe.model"))
    for folder in (written, rebuilt):
        processor = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.bpe.model"))
        assert fairseq_ids(processor, text) == fairseq_ids(original, text)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(CHARACTERS), min_size=1, max_size=40))
def test_the_sentencepiece_model_tokenizes_as_tokenizer_json(written, written_tokenizer, text):
    """Slow (sentencepiece) and fast ids agree. Not for a combining mark after whitespace ("\u3000\u0301"), where
    transformers 5's own conversion of any XLM-R sentencepiece model (BAAI's included) differs from sentencepiece."""
    processor = spm.SentencePieceProcessor(model_file=str(written / "sentencepiece.bpe.model"))
    assert fairseq_ids(processor, text) == written_tokenizer(text)["input_ids"]


def test_tiny_tokenizer_json_matches_its_sentencepiece_model(tiny_dir):
    original = spm.SentencePieceProcessor(model_file=str(tiny_dir / "sentencepiece.bpe.model"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    for text in TEXTS + ["ﬁne cafe\u0301", "ＡＢＣ  a  photo\tof\na cat ", "一只猫\u3000的照片"]:
        assert tokenizer(text)["input_ids"] == fairseq_ids(original, text), text


@pytest.mark.parametrize("which", ["written", "rebuilt"])
def test_transformers_builds_the_same_tokenizer_from_the_sentencepiece_model_alone(which, request, tmp_path):
    """transformers 5 has no slow XLM-R tokenizer; given only sentencepiece.bpe.model it converts it."""
    folder = request.getfixturevalue(which)
    for name in ("sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(folder / name, tmp_path / name)
    texts = TEXTS + ["ﬁne cafe\u0301", "ＡＢＣ  a  photo\tof\na cat "]
    assert AutoTokenizer.from_pretrained(tmp_path)(texts)["input_ids"] == AutoTokenizer.from_pretrained(folder)(texts)["input_ids"]


def test_special_tokens_map(written):
    assert json.loads((written / "special_tokens_map.json").read_text()) == {
        "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>", "pad_token": "<pad>",
        "sep_token": "</s>", "unk_token": "<unk>",
    }


def test_a_tokenizer_of_another_kind_has_no_sentencepiece_model():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    with pytest.raises(ValueError, match="expected an XLM-R unigram vocabulary"):
        sentencepiece_model(tokenizer)


def test_open_clip_folders_have_the_sentencepiece_model_and_umask_modes(tiny_dir, tmp_path, umask):
    from altclip_adapters.integrations.open_clip import save_for_open_clip

    out = save_for_open_clip(tiny_dir, tmp_path / "open_clip")
    assert (out / "sentencepiece.bpe.model").is_file()
    assert {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()} == {path.name: 0o666 & ~umask for path in out.iterdir()}


PROGRESS_BARS = ("Loading weights", "Writing model shards", "it/s]")


@pytest.mark.parametrize("to", [["sentence-transformers", "--native"], ["sentence-transformers"], ["open_clip"]])
def test_convert_draws_no_transformers_progress_bars(to, tiny_dir, tmp_path):
    """transformers' progress bars stay out of `altclip convert` (issue 19, item 6); the command says what it wrote."""
    import subprocess
    import sys

    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "altclip_adapters.cli", "convert", str(tiny_dir), "--to", *to, "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not [bar for bar in PROGRESS_BARS if bar in result.stderr], result.stderr
    assert result.stdout.startswith(f"wrote {to[0]} folder {out}")
    if "--native" in to:  # the folder loads back quietly too, through this package's load()
        code = f"from altclip_adapters.integrations.sentence_transformers import load; load({str(out)!r}).encode(['x'])"
        loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
        assert loaded.returncode == 0 and not [bar for bar in PROGRESS_BARS if bar in loaded.stderr], loaded.stderr


@pytest.mark.parametrize("hub_bars_off", [False, True])
@pytest.mark.parametrize("bars_on", [True, False])
def test_quiet_transformers_puts_the_switches_back(bars_on, hub_bars_off):
    import huggingface_hub.utils as hub
    from transformers.utils import logging

    from altclip_adapters.model.hf import quiet_transformers

    before = (logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled())
    try:
        logging.enable_progress_bar() if bars_on else logging.disable_progress_bar()
        hub.disable_progress_bars() if hub_bars_off else hub.enable_progress_bars()
        with quiet_transformers():
            assert not logging.is_progress_bar_enabled() and hub.are_progress_bars_disabled()
        assert (logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled()) == (bars_on, hub_bars_off)
    finally:
        logging.enable_progress_bar() if before[0] else logging.disable_progress_bar()
        hub.disable_progress_bars() if before[1] else hub.enable_progress_bars()


@pytest.mark.parametrize("to", ["baai", "open_clip"])
def test_a_native_sentence_transformers_folder_converts_back(to, tiny_dir, tmp_path, capsys):
    """`altclip convert` reads what `--native` wrote (it stopped with a TypeError traceback before)."""
    from altclip_adapters.integrations.sentence_transformers import is_native_folder

    native, out = tmp_path / "native", tmp_path / "out"
    assert cli.main(["convert", str(tiny_dir), "--to", "sentence-transformers", "--native", "--out", str(native)]) == 0
    assert is_native_folder(native) and not is_native_folder(tiny_dir)
    assert cli.main(["convert", str(native), "--to", to, "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {to} folder {out} from sentence-transformers {native}"
    if to == "baai":
        first, second = AltCLIP.from_pretrained(tiny_dir), AltCLIP.from_pretrained(out)
        assert first.state_dict().keys() == second.state_dict().keys()
        for key, tensor in first.state_dict().items():
            assert tensor.equal(second.state_dict()[key]), key
        assert first.processor.tokenize(TEXTS)["input_ids"].equal(second.processor.tokenize(TEXTS)["input_ids"])
