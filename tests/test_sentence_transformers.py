"""The sentence-transformers adapter on the tiny checkpoint, checked against transformers.AltCLIPModel
and sentence-transformers' own Transformer module (fp32, atol 1e-5)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_images, run_example
from datasets import Dataset, DatasetDict
from PIL import Image
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.modules import Normalize
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import AltCLIPModel
from transformers import AltCLIPProcessor as HFProcessor

from altclip_adapters import AltCLIP
from altclip_adapters.integrations.sentence_transformers import (
    AltCLIPModule,
    altclip_module,
    export_native,
    load,
    save_checkpoint,
)

ATOL = 1e-5
LONG_TEXT = " ".join(["a photo of a cat and a dog on the street"] * 30)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """transformers' AltCLIPModel and processor: normalised text / image features."""
    hf = AltCLIPModel.from_pretrained(tiny_dir).eval()
    processor = HFProcessor.from_pretrained(tiny_dir)

    def features(output):
        return output.pooler_output if hasattr(output, "pooler_output") else output

    @torch.no_grad()
    def text(texts, max_length=77):
        batch = processor.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return F.normalize(features(hf.get_text_features(**batch)), dim=-1).numpy()

    @torch.no_grad()
    def image(images):
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return F.normalize(features(hf.get_image_features(pixel_values=pixels)), dim=-1).numpy()

    return text, image


@pytest.fixture(scope="module")
def saved_dir(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("st_saved")
    model.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def native_dir(model, tmp_path_factory):
    return export_native(model, tmp_path_factory.mktemp("st_native"))


def test_load_gives_a_plain_sentence_transformer(model):
    assert type(model) is SentenceTransformer
    assert [type(m).__name__ for m in model] == ["AltCLIPModule", "Normalize"]
    assert model.modalities == ["text", "image", "message"]  # "message": batches mixing texts and images
    assert model.similarity_fn_name == "cosine"
    assert model.max_seq_length == 77
    assert model.get_embedding_dimension() == 16


def test_texts_equal_transformers(model, reference, texts):
    np.testing.assert_allclose(model.encode(texts), reference[0](texts), atol=ATOL)
    np.testing.assert_allclose(model.encode(texts[0]), reference[0](texts[:1])[0], atol=ATOL)


def test_images_equal_transformers_for_every_image_form(model, reference, images, tmp_path):
    expected = reference[1](images)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"image{i}.png")
        image.save(paths[-1])
    np.testing.assert_allclose(model.encode(images), expected, atol=ATOL)
    np.testing.assert_allclose(model.encode([np.array(image) for image in images]), expected, atol=ATOL)
    np.testing.assert_allclose(model.encode([str(path) for path in paths]), expected, atol=ATOL)
    np.testing.assert_allclose(model.encode(paths), expected, atol=ATOL)
    np.testing.assert_allclose(model.encode([{"image": image} for image in images]), expected, atol=ATOL)
    png = io.BytesIO()
    images[0].save(png, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    np.testing.assert_allclose(model.encode(data_uri), expected[0], atol=ATOL)


def test_equal_to_sentence_transformers_native_path(tiny_dir, texts, images):
    ours = load(tiny_dir, normalize=False, device="cpu")
    native = SentenceTransformer(str(tiny_dir), device="cpu")
    assert type(native[0]).__name__ == "Transformer"
    np.testing.assert_allclose(ours.encode(texts), native.encode(texts), atol=ATOL)
    np.testing.assert_allclose(ours.encode(images), native.encode(images), atol=ATOL)


def test_text_truncated_at_context_length(tiny_dir, model, reference):
    assert model.preprocess([LONG_TEXT])["input_ids"].shape == (1, 77)
    np.testing.assert_allclose(model.encode([LONG_TEXT]), reference[0]([LONG_TEXT]), atol=ATOL)
    longer = load(tiny_dir, context_length=300, device="cpu")
    assert longer.preprocess([LONG_TEXT])["input_ids"].shape == (1, 300)
    np.testing.assert_allclose(longer.encode([LONG_TEXT]), reference[0]([LONG_TEXT], max_length=300), atol=ATOL)
    with pytest.raises(ValueError, match="context_length must be an integer from 2 to 512"):
        longer.max_seq_length = 600


def test_encode_query_and_document(tiny_dir, model, texts, images):
    for inputs in (texts, images):
        np.testing.assert_allclose(model.encode_query(inputs), model.encode(inputs), atol=ATOL)
        np.testing.assert_allclose(model.encode_document(inputs), model.encode(inputs), atol=ATOL)
    prompted = load(tiny_dir, device="cpu", prompts={"query": "query: "})
    np.testing.assert_allclose(prompted.encode_query(texts), model.encode(["query: " + t for t in texts]), atol=ATOL)
    np.testing.assert_allclose(prompted.encode_query(images), model.encode(images), atol=ATOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(tiny_dir, model, texts, images, dtype):
    half = load(tiny_dir, dtype=dtype, device="cpu")
    assert half[0].model.dtype == dtype
    for inputs in (texts, images):
        got, expected = half.encode(inputs), model.encode(inputs)
        assert np.isfinite(got).all()
        assert (np.sum(got * expected, axis=1) > 0.99).all()


def test_save_writes_both_configs_and_the_requirement(saved_dir):
    assert json.loads((saved_dir / "config.json").read_text())["model_type"] == "altclip"
    assert json.loads((saved_dir / "altclip_sentence_transformers.json").read_text()) == {"max_seq_length": 77}
    modules = json.loads((saved_dir / "modules.json").read_text())
    assert modules[0]["type"] == "altclip_adapters.integrations.sentence_transformers.AltCLIPModule"
    assert modules[0]["path"] == ""
    st_config = json.loads((saved_dir / "config_sentence_transformers.json").read_text())
    assert st_config["requirements"]["altclip-adapters"]["specifier"].startswith(">=")
    assert st_config["similarity_fn_name"] == "cosine"
    AltCLIPModel.from_pretrained(saved_dir)  # the folder is also a transformers AltCLIP checkpoint


def test_reload_needs_trust_remote_code(saved_dir):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(saved_dir), device="cpu")


def test_reload_in_a_fresh_process(saved_dir, model, texts, images, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for i, image in enumerate(images):
        image.save(image_dir / f"{i}.png")
    code = (
        "import sys, numpy as np; from pathlib import Path; from PIL import Image\n"
        "from sentence_transformers import SentenceTransformer\n"
        "model = SentenceTransformer(sys.argv[1], trust_remote_code=True, device='cpu')\n"
        "images = [Image.open(p) for p in sorted(Path(sys.argv[2]).glob('*.png'))]\n"
        "np.save(sys.argv[3], np.concatenate([model.encode(sys.argv[4:]), model.encode(images)]))\n"
    )
    out = tmp_path / "embeddings.npy"
    command = [sys.executable, "-c", code, str(saved_dir), str(image_dir), str(out), *texts]
    subprocess.run(command, check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(out), np.concatenate([model.encode(texts), model.encode(images)]), atol=ATOL)


def test_load_accepts_a_saved_folder(saved_dir, native_dir, model, texts, tmp_path):
    np.testing.assert_allclose(load(saved_dir, device="cpu").encode(texts), model.encode(texts), atol=ATOL)
    assert load(saved_dir, context_length=100, device="cpu").max_seq_length == 100
    assert type(load(native_dir, device="cpu")[0]).__name__ == "Transformer"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil.Module"}]))
    with pytest.raises(ValueError, match="evil.Module"):
        load(foreign)


SAVED_BY_0_1_0 = Path(__file__).parent / "data" / "st_folder_0.1.0"  # modules.json: altclip_adapters.sentence_transformers


def test_a_folder_saved_by_0_1_0_still_loads(reference):
    """A folder saved before the layers became folders names the module's old path; it loads through our load and
    through a bare SentenceTransformer, and gives the embeddings 0.1.0 computed and transformers computes."""
    assert json.loads((SAVED_BY_0_1_0 / "modules.json").read_text())[0]["type"] == (
        "altclip_adapters.sentence_transformers.AltCLIPModule")
    before = np.load(SAVED_BY_0_1_0.with_name("st_folder_0.1.0_texts.npy"))
    texts = ["a cat", "一只猫"]
    oracle = AltCLIPModel.from_pretrained(SAVED_BY_0_1_0).eval()
    processor = HFProcessor.from_pretrained(SAVED_BY_0_1_0)
    with torch.no_grad():
        batch = processor.tokenizer(texts, padding=True, return_tensors="pt")
        output = oracle.get_text_features(**batch)
        expected = F.normalize(getattr(output, "pooler_output", output), dim=-1).numpy()
    for model in (load(SAVED_BY_0_1_0, device="cpu"), SentenceTransformer(str(SAVED_BY_0_1_0), trust_remote_code=True)):
        assert isinstance(model[0], AltCLIPModule)
        np.testing.assert_allclose(model.encode(texts), before, atol=ATOL)
        np.testing.assert_allclose(model.encode(texts), expected, atol=ATOL)


@pytest.mark.parametrize("source", ["checkpoint", "saved"])
def test_sentence_transformer_keywords_pass_through_and_win(source, tiny_dir, saved_dir):
    """Every ``SentenceTransformer`` keyword reaches it, and wins over load's defaults (cosine similarity, trusting
    this package's module class), as sentence-transformers users expect (MTEB passes ``similarity_fn_name``)."""
    folder = tiny_dir if source == "checkpoint" else saved_dir
    model = load(folder, device="cpu", similarity_fn_name="dot", prompts={"query": "query: "})
    assert model.similarity_fn_name == "dot" and model.prompts["query"] == "query: "
    assert load(folder, device="cpu", trust_remote_code=True).similarity_fn_name == "cosine"


def test_export_native_config(native_dir, tiny_dir, texts):
    config = json.loads((native_dir / "sentence_bert_config.json").read_text())
    assert config["modality_config"]["image"]["method"] == "get_image_features"
    assert config["module_output_name"] == "sentence_embedding"
    modules = json.loads((native_dir / "modules.json").read_text())
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)
    native = SentenceTransformer(str(native_dir), device="cpu")
    assert native.max_seq_length == 77
    assert native.preprocess([LONG_TEXT])["input_ids"].shape == (1, 77)
    core = AltCLIP.from_pretrained(tiny_dir)
    from_core = SentenceTransformer(str(export_native(core, native_dir.parent / "from_core", context_length=100)))
    assert from_core.max_seq_length == 100


def test_without_this_package(saved_dir, native_dir, model, texts, tmp_path):
    """Where altclip_adapters is not installed: a clear install message for a saved folder, and the
    exported native folder gives the same embeddings with a bare SentenceTransformer."""
    site = tmp_path / "site-packages"  # this environment's packages, less altclip_adapters
    site.mkdir()
    packages = Path(sysconfig.get_paths()["purelib"])
    for entry in packages.iterdir():
        if "altclip" not in entry.name.lower():
            (site / entry.name).symlink_to(entry)
    code = (
        "import sys, numpy as np\n"
        "from sentence_transformers import SentenceTransformer\n"
        "try:\n"
        "    SentenceTransformer(sys.argv[1], trust_remote_code=True, device='cpu')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "np.save(sys.argv[3], SentenceTransformer(sys.argv[2], device='cpu').encode(sys.argv[4:]))\n"
    )
    out = tmp_path / "native.npy"
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, str(saved_dir), str(native_dir), str(out), *texts],
        env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert 'pip install -U "altclip-adapters>=' in result.stdout
    np.testing.assert_allclose(np.load(out), model.encode(texts), atol=ATOL)


def test_multi_process_pool_equals_single_process(model, texts, images):
    pool = model.start_multi_process_pool(["cpu", "cpu"])
    try:
        np.testing.assert_allclose(model.encode(texts, pool=pool, batch_size=2), model.encode(texts), atol=ATOL)
        np.testing.assert_allclose(model.encode(images, pool=pool, batch_size=2), model.encode(images), atol=ATOL)
        mixed = [texts[0], images[0], texts[1], images[1], texts[2]]
        np.testing.assert_allclose(model.encode(mixed, pool=pool, batch_size=2), model.encode(mixed), atol=ATOL)
    finally:
        model.stop_multi_process_pool(pool)


def test_bad_inputs_name_the_item(model, images, tmp_path):
    cases = [
        ([None], ValueError, "an input is None"),
        (["a", ["b", "c"]], ValueError, r"input \['b', 'c'\] is a nested list"),
        ([("a", "b")], ValueError, r"input \('a', 'b'\) is a nested tuple"),
        ([{"caption": "x"}], ValueError, r"input \{'caption': 'x'\}: AltCLIP takes"),
        ([{"text": "a cat", "image": images[0]}], ValueError, "one modality per input"),
        ([{"role": "user", "content": "a cat"}], ValueError, "is a chat message"),
        ([[{"role": "user", "content": "a cat"}]], ValueError, "is a chat message"),
        ([3.5], ValueError, "input 3.5 is a float"),
        ([Path(tmp_path / "missing.png")], FileNotFoundError, "missing.png"),
        ([np.zeros((8, 8, 3), np.float32)], TypeError, r"uint8.*ndarray of shape \(8, 8, 3\) and dtype float32"),
    ]
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    cases += [([str(not_an_image)], ValueError, "notes.png"), ([Path(not_an_image)], ValueError, "notes.png")]
    for inputs, error, message in cases:
        with pytest.raises(error, match=message):
            model.encode(inputs)
    assert model.encode([]).shape == (0,)  # sentence-transformers' own contract (more in test_inputs_lists.py)


def separately(model, inputs, texts_at: list[int], **kwargs) -> np.ndarray:
    """The embeddings of ``inputs`` from two calls, one for the texts (at ``texts_at``) and one for the images."""
    out = np.zeros((len(inputs), model.get_embedding_dimension()), np.float32)
    for where in (texts_at, [i for i in range(len(inputs)) if i not in texts_at]):
        out[where] = model.encode([inputs[i] for i in where], **kwargs)
    return out


def test_a_list_mixing_texts_and_images_equals_separate_calls(model, images, tmp_path):
    """Issue 10, kind 9: embeddings in input order, each equal to its own modality's call."""
    dog = tmp_path / "dog.jpg"
    images[1].save(dog)
    inputs = ["a cat", Image.open(dog), "一只狗", str(dog), {"text": "猫の写真"}, {"image": images[2]}, Path(dog),
              images[3], "a diagram of a neural network"]
    got = model.encode(inputs)
    assert got.shape == (len(inputs), 16)
    np.testing.assert_allclose(got, separately(model, inputs, [0, 2, 4, 8]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.encode(inputs, batch_size=2), got, atol=1e-6, rtol=0)
    np.testing.assert_allclose(got[::-1], model.encode(inputs[::-1]), atol=1e-6, rtol=0)  # order kept
    tensors = model.encode(inputs, convert_to_tensor=True)
    np.testing.assert_allclose(tensors.numpy(), got, atol=1e-6, rtol=0)


def test_prompts_apply_to_the_texts_of_a_mixed_list(model, images):
    inputs = ["a cat", images[0], "一只狗", images[1]]
    got = model.encode(inputs, prompt="query: ")
    np.testing.assert_allclose(got, separately(model, inputs, [0, 2], prompt="query: "), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got[[1, 3]], model.encode(images[:2]), atol=1e-6, rtol=0)  # images take no prompt
    assert not np.allclose(got[0], model.encode("a cat"), atol=1e-3)


def test_strings_are_images_only_when_they_are_existing_image_files(model, images, tmp_path):
    path = tmp_path / "cat.png"
    images[0].save(path)
    np.testing.assert_allclose(model.encode(str(path)), model.encode(images[0]), atol=ATOL)
    missing = str(tmp_path / "dog.png")
    assert model[0].preprocess([missing])["modality"] == "text"


def test_train_reload_and_export(tiny_dir, tmp_path, texts):
    model = load(tiny_dir, device="cpu")
    captions = ["a photo of a cat", "a photo of a dog", "a red car on the street", "two people riding bicycles"]
    translations = ["一只猫的照片", "一只狗的照片", "街上的红色汽车", "两个人在骑自行车"]
    data = DatasetDict({
        "image_caption": Dataset.from_dict({"anchor": make_images(4, seed=1), "positive": captions}),
        "translation": Dataset.from_dict({"anchor": captions, "positive": translations}),
    })
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=10, per_device_train_batch_size=4, learning_rate=3e-3,
        use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, loss=MultipleNegativesRankingLoss(model)
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_image_caption_loss"] < before["eval_image_caption_loss"]
    assert after["eval_translation_loss"] < before["eval_translation_loss"]

    model.save(str(tmp_path / "trained"))
    reloaded = SentenceTransformer(str(tmp_path / "trained"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(reloaded.encode(texts), model.encode(texts), atol=ATOL)

    checkpoint = save_checkpoint(model, tmp_path / "baai")
    assert not (checkpoint / "modules.json").exists()
    hf = AltCLIPModel.from_pretrained(checkpoint).eval()
    batch = HFProcessor.from_pretrained(checkpoint).tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = hf.get_text_features(**batch)
    expected = F.normalize(getattr(output, "pooler_output", output), dim=-1).numpy()
    np.testing.assert_allclose(model.encode(texts), expected, atol=ATOL)


def test_module_needs_an_altclip_model(model):
    with pytest.raises(TypeError, match="not AltCLIPModule"):
        altclip_module(SentenceTransformer(modules=[Normalize()], device="cpu"))
    core = AltCLIP(altclip_module(model).model.config)
    with pytest.raises(ValueError, match="no processor"):
        AltCLIPModule(core)


def test_example_runs(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run_example("sentence_transformers_search", tiny_dir, monkeypatch)
    out = capsys.readouterr().out
    assert "'un triangle vert'" in out
    assert "the plain folder gives the same embeddings: True" in out


def test_m18_shapes_equal_transformers(m18_dir, texts, images):
    model = load(m18_dir, device="cpu")
    hf = AltCLIPModel.from_pretrained(m18_dir).eval()
    processor = HFProcessor.from_pretrained(m18_dir)
    with torch.no_grad():
        text = hf.get_text_features(**processor.tokenizer(texts, padding=True, return_tensors="pt"))
        image = hf.get_image_features(pixel_values=processor.image_processor(images, return_tensors="pt")["pixel_values"])
    for got, output in ((model.encode(texts), text), (model.encode(images), image)):
        np.testing.assert_allclose(got, F.normalize(getattr(output, "pooler_output", output), dim=-1).numpy(), atol=ATOL)
