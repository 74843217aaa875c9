"""A griffe extension for the docs build (mkdocs.yml loads it): the API pages document the paths users import.

``altclip_adapters/__init__.py`` imports its public names on first use (``_EXPORTS``, PEP 562), which griffe's
static analysis cannot follow: this adds each name of ``_EXPORTS`` to the package as an alias of the object it
names, so that a page writes ``::: altclip_adapters.Embedder``. It also turns the Sphinx roles the docstrings use
(``:func:`load_image```, ``:class:`~.embedder.Embedder```) into Markdown code, which is how they read best.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

PACKAGE = "altclip_adapters"
ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?\.?([^`]+)`")


def exports(package: griffe.Module) -> dict[str, str]:
    """The ``_EXPORTS`` dict of the package's ``__init__.py`` (public name -> the module defining it)."""
    tree = ast.parse(package.filepath.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{package.filepath} defines no _EXPORTS")


def plain_roles(obj: griffe.Object) -> None:
    """Sphinx roles in the docstrings of ``obj`` and its members, recursively, as Markdown code spans."""
    if obj.docstring is not None:
        obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            plain_roles(member)


class PublicExports(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.path != PACKAGE:
            return
        plain_roles(pkg)
        for name, module in exports(pkg).items():
            pkg.set_member(name, griffe.Alias(name, f"{module}.{name}", parent=pkg))
