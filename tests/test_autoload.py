"""The open_clip hook is a good guest: open_clip imports whenever open_clip alone would.

Each case runs in a fresh interpreter started with the installed ``altclip_adapters_autoload.pth``,
and against the same code with the hook switched off (open_clip alone) as the oracle. A registration
that fails prints one warning, and asking open_clip for AltCLIP then raises an error carrying the
cause; every other model works as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from altclip_adapters.integrations._open_clip_registration import SUPPORTED_OPEN_CLIP

# Runs after a breaker, prints what open_clip does: registered names, each entry point for AltCLIP
# (the name, and an AltCLIP open_clip folder) and for an open_clip model, an explicit register().
PROBE = """
import json, sys, tempfile, warnings
import open_clip

def outcome(call, *args):
    try:
        call(*args)
        return "ok"
    except Exception as error:
        cause = error.__cause__
        return f"{type(error).__name__}: {error}" + (f" <- {type(cause).__name__}" if cause else "")

folder = tempfile.mkdtemp()  # an open_clip folder of AltCLIP's (save_for_open_clip writes this config)
with open(f"{folder}/open_clip_config.json", "w") as file:
    json.dump({"model_cfg": open_clip.get_model_config("RN50") | {"altclip": {}}}, file)
small = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
         "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
with open(f"{folder}/small-clip.json", "w") as file:
    json.dump(small, file)
open_clip.add_model_config(f"{folder}/small-clip.json")
report = {
    "registered": "AltCLIP" in open_clip.list_models(),
    "create_model": outcome(open_clip.create_model, "AltCLIP"),
    "create_model_and_transforms": outcome(open_clip.create_model_and_transforms, "AltCLIP-m18"),
    "create_model_from_pretrained": outcome(open_clip.create_model_from_pretrained, "AltCLIP-m9", "baai"),
    "get_tokenizer": outcome(lambda: open_clip.get_tokenizer(model_name="AltCLIP")),
    "local_dir": outcome(open_clip.create_model, f"local-dir:{folder}"),
    "other_model": outcome(open_clip.create_model_and_transforms, "small-clip"),
    "other_tokenizer": outcome(open_clip.get_tokenizer, "RN50"),
}
import altclip_adapters  # registers again if it can: no second warning
report["register"] = outcome(altclip_adapters.register)
print(json.dumps(report))
"""
BREAKERS = {  # how a registration can fail, and what its warning names
    "a future open_clip": (
        (  # the real open_clip, announcing itself as 4.1.0
            "import sys, types; version = types.ModuleType('open_clip.version'); version.__version__ = '4.1.0'; "
            "sys.modules['open_clip.version'] = version"
        ),
        f"only open_clip_torch{SUPPORTED_OPEN_CLIP} is supported",
    ),
    "a bug of ours": (
        "import sys; sys.modules['altclip_adapters.integrations._open_clip_registration'] = None",
        "import of altclip_adapters.integrations._open_clip_registration halted",
    ),
}


def python(code: str, hook: bool = True, **env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter of this environment (hook switched on or off) running ``code``."""
    environ = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **env}
    environ["ALTCLIP_ADAPTERS_NO_AUTOLOAD"] = "0" if hook else "1"
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
        check=False,
    )


def ours(stderr: str) -> list[str]:
    """The warnings this package printed (``-W always`` shows every other library's too)."""
    return [line for line in stderr.splitlines() if "Warning:" in line and "ALTCLIP_ADAPTERS_NO_AUTOLOAD" in line]


def report(result: subprocess.CompletedProcess) -> dict[str, object]:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_a_failed_registration_warns_once_and_refuses_only_altclip(breaker):
    setup, cause = BREAKERS[breaker]
    result = python(f"{setup}\n{PROBE}")
    got = report(result)
    warnings = ours(result.stderr)
    assert len(warnings) == 1 and "RuntimeWarning: AltCLIP is not registered with open_clip" in warnings[0], (
        result.stderr
    )
    assert cause in warnings[0] and "ALTCLIP_ADAPTERS_NO_AUTOLOAD=1" in warnings[0]
    assert got["registered"] is False
    for entry_point in (
        "create_model",
        "create_model_and_transforms",
        "create_model_from_pretrained",
        "get_tokenizer",
        "local_dir",
    ):
        assert got[entry_point].startswith("RuntimeError: open_clip has no AltCLIP model"), (entry_point, got)
        assert cause in got[entry_point] and got[entry_point].endswith(("<- ImportError", "<- ModuleNotFoundError"))
    assert got["other_model"] == got["other_tokenizer"] == "ok"
    assert (
        got["register"].startswith(("ImportError", "ModuleNotFoundError")) and cause in got["register"]
    )  # it may raise
    alone = python(f"{setup}\nimport open_clip", hook=False)  # the oracle, and the switch that silences the warning
    assert alone.returncode == 0 and ours(alone.stderr) == []


@pytest.mark.parametrize("missing", ["timm", "transformers"])
def test_a_missing_dependency_of_the_core_fails_the_build_not_the_import(missing):
    """open_clip imports without timm or transformers; registration needs neither, building AltCLIP names it."""
    setup = f"import sys; sys.modules[{missing!r}] = None\nimport open_clip\n"
    assert python(setup, hook=False).returncode == 0  # open_clip alone imports
    result = python(
        f"{setup}print('AltCLIP' in open_clip.list_models())\n"
        "try:\n    open_clip.create_model('AltCLIP')\nexcept ImportError as error:\n    print(error)"
    )
    assert result.returncode == 0 and ours(result.stderr) == [], result.stderr[-3000:]
    registered, error = result.stdout.splitlines()
    assert registered == "True"
    assert (
        error.startswith("open_clip cannot build AltCLIP: importing altclip_adapters' model failed")
        and missing in error
    )


def test_a_broken_hook_at_interpreter_start_is_one_warning(tmp_path):
    """The .pth finds an ``altclip_adapters`` whose ``integrations/_autoload.py`` raises: the interpreter starts, warns
    once."""
    package = tmp_path / "altclip_adapters"
    (package / "integrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "integrations" / "_autoload.py").write_text("raise RuntimeError('broken on purpose')\n")
    result = python("import open_clip; print(open_clip.__version__)", PYTHONPATH=str(tmp_path))
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-3000:]
    warnings = ours(result.stderr)
    assert len(warnings) == 1 and "RuntimeError: broken on purpose" in warnings[0], result.stderr
    assert "ALTCLIP_ADAPTERS_NO_AUTOLOAD=1" in warnings[0] and "Traceback" not in result.stderr
    assert ours(python("import open_clip", hook=False, PYTHONPATH=str(tmp_path)).stderr) == []


HEAVY = [  # what building AltCLIP imports and registering it must not
    "altclip_adapters.model.core",
    "altclip_adapters.integrations.open_clip",
    "altclip_adapters.model.hf",
    "transformers.modeling_utils",
    "transformers.models.xlm_roberta.modeling_xlm_roberta",
]


def test_registration_imports_neither_the_core_nor_transformers_models():
    code = (
        f"import sys, open_clip; print('AltCLIP' in open_clip.list_models(), [m for m in {HEAVY} if m in sys.modules])"
    )
    result = python(code)
    assert result.returncode == 0 and "AltCLIP" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.strip() == "True []"
