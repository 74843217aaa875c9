"""Write pip constraints that pin each direct dependency at the lowest version ``pyproject.toml`` declares.

Every requirement of ``[project].dependencies`` and of every extra is pinned at its lower bound
(``name>=1.2`` -> ``name==1.2``; with two bounds for one name, the higher one), so that installing
``.[test]`` under these constraints tests what the package claims to accept (the tox env ``lowest``).
Extras added to ``pyproject.toml`` are picked up as they come. A requirement without a lower bound is an
error: it would claim every version ever released.

Usage: ``python constraints/lowest.py OUTPUT`` (``-`` for stdout). Needs ``packaging``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOWER = (">=", "==", "~=")  # operators whose version is the lowest one admitted


def requirements(pyproject: dict) -> list[Requirement]:
    """The direct requirements of the package and of all its extras (self-references left out)."""
    project = pyproject["project"]
    lines = [
        *project.get("dependencies", []),
        *(r for extra in project.get("optional-dependencies", {}).values() for r in extra),
    ]
    own = canonicalize_name(project["name"])
    return [req for req in map(Requirement, lines) if canonicalize_name(req.name) != own]


def lowest(pyproject: dict) -> list[str]:
    """Constraint lines, one per direct requirement, at its lower bound (markers kept, extras dropped).

    Raises ValueError naming the requirements that have no lower bound."""
    bounds: dict[str, tuple[Version, str]] = {}
    unbounded = []
    for req in requirements(pyproject):
        name = canonicalize_name(req.name)
        versions = [Version(spec.version) for spec in req.specifier if spec.operator in LOWER]
        if not versions:
            unbounded.append(str(req))
            continue
        marker = f"; {req.marker}" if req.marker else ""
        if name not in bounds or max(versions) > bounds[name][0]:
            bounds[name] = (max(versions), marker)
    if unbounded:
        raise ValueError(f"no lower bound declared in pyproject.toml for: {', '.join(unbounded)}")
    return [f"{name}=={version}{marker}" for name, (version, marker) in sorted(bounds.items())]


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit(__doc__)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    text = "\n".join(lowest(pyproject)) + "\n"
    if argv[0] == "-":
        sys.stdout.write(text)
    else:
        Path(argv[0]).write_text(text)
        print(f"{argv[0]}:\n{text}", end="")


if __name__ == "__main__":
    main(sys.argv[1:])
