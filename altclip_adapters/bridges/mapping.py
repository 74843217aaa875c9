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


def import_state_dict(
    table: list[Rule], expected: dict[str, torch.Tensor], get: Callable[[str], torch.Tensor], present: set[str], source: str
) -> dict[str, torch.Tensor]:
    """Build the core state dict from foreign tensors, strictly.

    ``expected`` maps each core key to a tensor of the right shape (meta tensors are fine);
    ``get`` reads one foreign tensor; ``present`` is the set of foreign keys available.
    Raises ValueError listing every missing, unexpected and mis-shaped key.
    """
    plan = {key: theirs_for(table, key) for key in expected}
    wanted = {k for _, keys in plan.values() for k in keys}
    missing = sorted(wanted - present)
    unexpected = sorted(present - wanted)
    out, misshaped = {}, []
    if not missing and not unexpected:
        for key, (r, keys) in plan.items():
            tensor = OPS[r.op][0](*(get(k) for k in keys))
            if tuple(tensor.shape) != tuple(expected[key].shape):
                misshaped.append(f"{' + '.join(keys)}: {tuple(tensor.shape)} (expected {tuple(expected[key].shape)})")
            out[key] = tensor
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match the AltCLIP architecture its config describes:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                parts.append(f"  {label} ({len(keys)}): {shown}")
        raise ValueError("\n".join(parts))
    return out


def export_state_dict(table: list[Rule], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The foreign state dict for a core state dict (contiguous tensors, ready to save)."""
    out = {}
    for key, tensor in state.items():
        r, keys = theirs_for(table, key)
        for k, t in zip(keys, OPS[r.op][1](tensor)):
            out[k] = t.contiguous()
    return out
