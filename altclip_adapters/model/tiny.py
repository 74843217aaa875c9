"""Random AltCLIP checkpoints in the exact BAAI/AltCLIP file layout, built offline.

Used by the tests, the benchmarks and the demo when the real weights cannot be had. Every
parameter is perturbed away from its initial value so that a wrong weight mapping shows.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import torch

from altclip_adapters.atomic import atomic_path, write_bytes, write_json, write_with

# What every entry point running on a random checkpoint prints first (the demo's offline fallback, examples' --tiny)
RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS: a random tiny checkpoint built offline; every score below is meaningless"

SHAPES = {
    # text tower, vision tower and projection sizes of each kind of checkpoint
    "tiny": dict(
        text=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, project_dim=24),
        vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=16,
    ),
    "m18": dict(  # AltCLIP-m18's structure at toy size: text project_dim = projection_dim, wider GELU ViT, transformation_pre
        text=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, project_dim=40),
        vision=dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96, image_size=28, patch_size=14, hidden_act="gelu"),
        projection_dim=40,
    ),
    "full": dict(  # BAAI/AltCLIP's towers (XLM-R large, ViT-L/14 at 224) with a small vocabulary
        text=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, project_dim=768),
        vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=224, patch_size=14, hidden_act="quick_gelu"),
        projection_dim=768,
    ),
    "b32": dict(  # transformers' defaults (vision: ViT-B/32 at 224; projection_dim, project_dim) on the tiny text tower
        text=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
        vision=dict(),
        projection_dim=768,
    ),
}

CORPUS = [
    "a photo of a cat", "a photo of a dog", "a red car on the street", "two people riding bicycles",
    "一只猫的照片", "一只狗的照片", "街上的红色汽车", "两个人在骑自行车",
    "猫の写真", "犬の写真", "通りの赤い車", "自転車に乗る二人",
    "une photo d'un chat", "ein Foto von einem Hund", "una foto de un coche rojo", "фотография кошки",
    "고양이 사진", "صورة قطة", "una foto di un cane", "a diagram of a neural network",
]


def train_tokenizer(folder: Path, vocab_size: int = 300):
    """An XLM-R style tokenizer (sentencepiece unigram, fairseq id layout) trained on ``CORPUS``.

    Args:
        folder: where its ``sentencepiece.bpe.model`` is written (the folder must exist).
        vocab_size: the sentencepiece vocabulary asked for (a soft limit: the corpus may give fewer pieces).

    Returns:
        A slow ``XLMRobertaTokenizer`` on that file; the fast tokenizer made from it normalises as it does.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import XLMRobertaTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3), model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False,
        character_coverage=1.0, model_type="unigram", minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto.FromString(model.getvalue())
    # fairseq layout: <s> <pad> </s> <unk>, then sentencepiece's pieces from id 3 on, then <mask>
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(piece.piece, piece.score) for piece in proto.pieces[3:]]
    vocab.append(("<mask>", 0.0))
    write_bytes(folder / "sentencepiece.bpe.model", model.getvalue())
    return XLMRobertaTokenizer(
        vocab=vocab, model_max_length=512, _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap,
        vocab_file=str(folder / "sentencepiece.bpe.model"),
    )


def _perturb(model: torch.nn.Module, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)


def diff_config(config) -> dict:
    """A transformers ``AltCLIPConfig`` as transformers 4 wrote ``config.json`` (``to_diff_dict``).

    Args:
        config (transformers.AltCLIPConfig): the config to write.

    Returns:
        Its dict with every key equal to its class default left out, at the top level and in each sub-config
        (``model_type`` kept).
    """
    data = config.to_dict()
    for key in ("text_config", "vision_config"):
        defaults = type(getattr(config, key))().to_dict()
        data[key] = {k: v for k, v in data[key].items() if k == "model_type" or v != defaults.get(k)}
    defaults = type(config)().to_dict()
    kept = ("text_config", "vision_config", "model_type")
    return {k: v for k, v in data.items() if k in kept or v != defaults.get(k)}


def make_checkpoint(
    folder: str | Path,
    shape: Literal["tiny", "m18", "full", "b32"] = "tiny",
    layout: Literal["safetensors", "bin", "sharded"] = "safetensors",
    seed: int = 0,
    config_style: Literal["full", "diff"] = "full",
    perturbation: float = 0.05,
) -> Path:
    """Write a random AltCLIP checkpoint folder in the exact BAAI/AltCLIP layout: config.json, weights, tokenizer,
    preprocessor config. Built offline with transformers' ``AltCLIPModel``, so any loader can be checked against it.

    Args:
        folder: where to write (created if missing).
        shape: ``tiny`` (32-wide towers, 16-d embeddings: seconds to build), ``m18`` (AltCLIP-m18's structure at
            toy size: GELU ViT, ``transformation_pre``), ``full`` (BAAI/AltCLIP's towers with a small vocabulary,
            about 2.3 GB) or ``b32`` (transformers' default ViT-B/32 vision tower); see ``SHAPES``.
        layout: ``safetensors`` as transformers 5 writes it (``encoder.layer.N`` in both towers); ``bin`` as the
            BAAI files are (transformers 4 pickle: text ``encoder.layer.N``, vision ``encoder.layers.N``,
            ``position_ids`` buffers); ``sharded`` as two safetensors shards + index.
        seed: the seed of the initialisation and the noise.
        config_style: ``full`` as transformers 5 writes config.json, ``diff`` as transformers 4 did
            (:func:`diff_config`).
        perturbation: the standard deviation of the N(0, s) noise added to every parameter after transformers'
            initialisation, so that a wrong weight mapping shows (0: transformers' initialisation as is).

    Returns:
        ``folder``, as a ``Path``: ``AltCLIP.from_pretrained`` and ``transformers.AltCLIPModel`` load it.
    """
    from safetensors.torch import save_file
    from transformers import AltCLIPConfig, AltCLIPModel, CLIPImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(folder)
    sizes = SHAPES[shape]
    config = AltCLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=514, **sizes["text"]),
        vision_config=dict(**sizes["vision"], projection_dim=sizes["projection_dim"]),
        projection_dim=sizes["projection_dim"],
    )
    torch.manual_seed(seed)
    model = AltCLIPModel(config).eval()
    _perturb(model, seed, perturbation)
    tokenizer.save_pretrained(folder)
    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    if config_style == "diff":
        write_json(folder / "config.json", diff_config(config))
    else:
        config.save_pretrained(folder)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if shape == "m18":
        generator = torch.Generator().manual_seed(seed + 1)
        width, project = sizes["text"]["hidden_size"], sizes["text"]["project_dim"]
        state["text_model.transformation_pre.weight"] = torch.randn(project, width, generator=generator) * 0.1
        state["text_model.transformation_pre.bias"] = torch.randn(project, generator=generator) * 0.1
    if layout == "bin":
        state = {k.replace("text_model.roberta.encoder.layers.", "text_model.roberta.encoder.layer."): v for k, v in state.items()}
        state["text_model.roberta.embeddings.position_ids"] = torch.arange(514).expand(1, -1).contiguous()
        state["vision_model.embeddings.position_ids"] = torch.arange((size // patch) ** 2 + 1).expand(1, -1).contiguous()
        write_with(folder / "pytorch_model.bin", lambda file: torch.save(state, file))
        return folder
    state = {k.replace(".encoder.layers.", ".encoder.layer."): v for k, v in state.items()}  # transformers 5 on disk
    if layout == "sharded":
        keys = sorted(state)
        shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
        for name, names in shards.items():
            with atomic_path(folder / name) as tmp:
                save_file({k: state[k] for k in names}, str(tmp), metadata={"format": "pt"})
        index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
        write_json(folder / "model.safetensors.index.json", index)
    else:
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
    return folder
