"""A small engine that applies a weight-mapping table in either direction.

A table is a list of ``Rule(ours, theirs, op)``: ``ours`` is a key pattern in the core's
state dict, ``theirs`` one or more key patterns in the foreign layout. Placeholders: ``{n}``
matches a layer index, ``{p}`` one name part (``weight``, ``bias``), ``{rest}`` any tail.
``op`` names how tensors change on the way in (foreign -> core) and out (core -> foreign).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

_PLACEHOLDER = {"n": r"\d+", "p": r"[^.]+", "rest": r".+"}


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: tuple[str, ...]
    op: str | None = None


def rule(ours: str, theirs: str | tuple[str, ...], op: str | None = None) -> Rule:
    return Rule(ours, (theirs,) if isinstance(theirs, str) else theirs, op)


# op name -> (foreign tensors -> core tensor, core tensor -> foreign tensors)
OPS: dict[str | None, tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor], tuple[torch.Tensor, ...]]]] = {
    None: (lambda t: t, lambda t: (t,)),
    # q, k, v projections <-> one fused qkv projection (rows stacked q, k, v)
    "qkv": (lambda q, k, v: torch.cat([q, k, v], dim=0), lambda t: tuple(c.clone() for c in t.chunk(3, dim=0))),
    # class embedding [D] <-> timm's cls_token [1, 1, D]
    "token": (lambda t: t.reshape(1, 1, -1), lambda t: (t.reshape(-1),)),
    # position embedding [N, D] <-> timm's pos_embed [1, N, D]
    "batch": (lambda t: t.unsqueeze(0), lambda t: (t[0],)),
}


def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern)
    for name, sub in _PLACEHOLDER.items():
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{sub})")
    return re.compile(regex + "$")


def theirs_for(table: list[Rule], ours_key: str) -> tuple[Rule, tuple[str, ...]]:
    """The rule and the foreign key(s) that hold the core's ``ours_key``."""
    for r in table:
        m = _compile(r.ours).match(ours_key)
        if m:
            return r, tuple(t.format(**m.groupdict()) for t in r.theirs)
    raise KeyError(f"no mapping rule covers the core key {ours_key!r}")


Shape = tuple[int, ...]


@dataclass(frozen=True)
class Mismatch:
    """How the tensors a checkpoint holds differ from the ones a model expects, by key and shape (in the order of
    the model's keys, then the file's); false when they fit."""

    missing: list[str]
    unexpected: list[str]
    misshaped: list[tuple[str, Shape, Shape]]  # (key, shape in the file, shape in the model)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped)

    def report(self, source: str) -> str:
        """Every missing, unexpected and mis-shaped key (at most 20 of each kind), one kind per line."""
        parts = [f"{source} does not match the AltCLIP architecture its config describes:"]
        misshaped = [f"{key}: {found} (expected {expected})" for key, found, expected in self.misshaped]
        for label, keys in (("missing", sorted(self.missing)), ("unexpected", sorted(self.unexpected)),
                            ("wrong shape", misshaped)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                parts.append(f"  {label} ({len(keys)}): {shown}")
        return "\n".join(parts)

    def summary(self) -> str:
        """One phrase: how many of each kind and one example, e.g. ``2 tensors of another shape, 1 missing (e.g.
        text_projection.weight is [8, 24] in the file, [16, 24] in the model)``; empty when they fit."""
        problems, examples = [], []
        if self.misshaped:
            problems.append(f"{len(self.misshaped)} tensor{'s' * (len(self.misshaped) != 1)} of another shape")
            key, found, expected = self.misshaped[0]
            examples.append(f"{key} is {list(found)} in the file, {list(expected)} in the model")
        if self.missing:
            problems.append(f"{len(self.missing)} missing")
            examples.append(f"{self.missing[0]} is missing")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected")
            examples.append(f"{self.unexpected[0]} is not in the model")
        return f"{', '.join(problems)} (e.g. {examples[0]})" if problems else ""


def compare(expected: dict[str, Shape], found: dict[str, Shape]) -> Mismatch:
    """The strict check: every expected key present with its shape, nothing else."""
    return Mismatch(
        missing=[key for key in expected if key not in found],
        unexpected=[key for key in found if key not in expected],
        misshaped=[(key, tuple(found[key]), tuple(shape)) for key, shape in expected.items()
                   if key in found and tuple(found[key]) != tuple(shape)],
    )


def foreign_shapes(table: list[Rule], expected: dict[str, torch.Tensor]) -> dict[str, Shape]:
    """The shape of every foreign tensor the core state dict ``expected`` maps to (computed on the meta device)."""
    meta = {key: torch.empty(tensor.shape, device="meta") for key, tensor in expected.items()}
    return {key: tuple(tensor.shape) for key, tensor in export_state_dict(table, meta).items()}


def import_state_dict(
    table: list[Rule],
    expected: dict[str, torch.Tensor],
    get: Callable[[str], torch.Tensor],
    present: dict[str, Shape],
    source: str,
) -> dict[str, torch.Tensor]:
    """Build the core state dict from foreign tensors, strictly.

    ``expected`` maps each core key to a tensor of the right shape (meta tensors are fine); ``get`` reads one
    foreign tensor; ``present`` maps each available foreign key to its shape. Raises ValueError listing every
    missing, unexpected and mis-shaped key (:meth:`Mismatch.report`) before any tensor is read.
    """
    mismatch = compare(foreign_shapes(table, expected), present)
    if mismatch:
        raise ValueError(mismatch.report(source))
    out = {}
    for key in expected:
        r, keys = theirs_for(table, key)
        out[key] = OPS[r.op][0](*(get(k) for k in keys))
    return out


def export_state_dict(table: list[Rule], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The foreign state dict for a core state dict (contiguous tensors, ready to save)."""
    out = {}
    for key, tensor in state.items():
        r, keys = theirs_for(table, key)
        for k, t in zip(keys, OPS[r.op][1](tensor)):
            out[k] = t.contiguous()
    return out
