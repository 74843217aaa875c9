"""Declared versions are claims: the lowest-versions constraints cover every direct requirement, and the
open_clip range that registration accepts is the one pyproject.toml declares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from altclip_adapters.integrations._open_clip_registration import SUPPORTED_OPEN_CLIP

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_spec = importlib.util.spec_from_file_location("lowest", ROOT / "constraints" / "lowest.py")
lowest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lowest)


def declared(name: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    lines = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return [req for req in map(Requirement, lines) if canonicalize_name(req.name) == canonicalize_name(name)]


def test_every_direct_requirement_is_pinned_at_its_lower_bound():
    pins = {canonicalize_name(Requirement(line).name): Requirement(line) for line in lowest.lowest(PYPROJECT)}
    assert set(pins) == {canonicalize_name(req.name) for req in lowest.requirements(PYPROJECT)}
    assert "altclip-adapters" not in pins and {"torch", "transformers", "open-clip-torch", "pytest"} <= set(pins)
    for name, pin in pins.items():
        (spec,) = pin.specifier
        assert spec.operator == "==" and not pin.extras
        assert all(req.specifier.contains(spec.version) for req in declared(name)), (name, spec)


def test_bounds_markers_and_missing_bounds():
    project = {
        "name": "demo-package",
        "dependencies": ["a[extra]>=1.2,<2", "b>=0.5; python_version < '3.12'"],
        "optional-dependencies": {"x": ["a>=1.4", "demo-package[y]"], "y": ["c==3.1"]},
    }
    assert lowest.lowest({"project": project}) == ["a==1.4", 'b==0.5; python_version < "3.12"', "c==3.1"]
    project["optional-dependencies"]["y"] = ["c", "d<2"]
    with pytest.raises(ValueError, match="no lower bound declared in pyproject.toml for: c, d<2"):
        lowest.lowest({"project": project})


def test_the_supported_open_clip_range_is_the_declared_one():
    """The registration's guard refuses what pyproject.toml does not admit, and nothing it admits."""
    (requirement,) = declared("open_clip_torch")
    assert requirement.specifier == SUPPORTED_OPEN_CLIP
