"""Which parameters a probe measures, and named blocks of them.

A selection is None (all trainable parameters), a predicate `(name, parameter) -> bool`, or a
name or list of names where each entry is

* an exact parameter name (`"fc1.weight"`),
* a module prefix (`"fc1"` selects `fc1.weight` and `fc1.bias`), or
* a glob pattern (any of `*?[` in it), matched with `fnmatch.fnmatchcase` against the full
  parameter names: `"transformer.h.*.attn.*"`, `"*.mlp.*"`, `"*wte*"`. `*` matches dots too.

An entry that matches no trainable parameter is an error naming the closest names (difflib).

Blocks (`by=` of the curvature estimators) are a dict of block name -> entry or list of entries,
each selected as above; every block gets its own result (the diagonal block of the Hessian).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from .errors import LandscapeError

ParamSelection = Sequence[str] | Callable[[str, nn.Parameter], bool] | None
BlockSpec = Mapping[str, str | Sequence[str]]
GLOB_CHARS = "*?["


def is_pattern(entry: str) -> bool:
    """True when `entry` is a glob pattern rather than a name or prefix."""
    return any(c in entry for c in GLOB_CHARS)


def closest(entry: str, names: Sequence[str], n: int = 3) -> list[str]:
    """The names most similar to `entry` (difflib ratio), best first; for a pattern the
    comparison uses its literal parts."""
    probe = entry.replace("*", "").replace("?", "") if is_pattern(entry) else entry
    found = difflib.get_close_matches(probe, names, n=n, cutoff=0.3)
    return found or list(names[:n])


def matches(entry: str, names: Sequence[str]) -> list[str]:
    """The names an entry selects (a name, a module prefix, or a glob pattern)."""
    if is_pattern(entry):
        return [n for n in names if fnmatch.fnmatchcase(n, entry)]
    return [n for n in names if n == entry or n.startswith(entry + ".")]


def select_params(model: nn.Module, selection: ParamSelection
                  ) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the selected trainable parameters, in `named_parameters()` order.

    Raises:
        LandscapeError: no trainable parameter, a predicate that selects none, an entry that
            matches none (the closest names are given), or a frozen parameter named exactly.
    """
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if not trainable:
        raise LandscapeError(
            "the model has no trainable parameters (all have requires_grad=False); unfreeze the "
            "ones to measure with p.requires_grad_(True)."
        )
    if selection is None:
        return trainable
    if callable(selection):
        chosen = [(n, p) for n, p in trainable if selection(n, p)]
        if not chosen:
            raise LandscapeError("the params= predicate selected no trainable parameter.")
        return chosen
    names = select_names([n for n, _ in trainable], selection,
                         frozen={n for n, p in named if not p.requires_grad})
    keep = set(names)
    return [(n, p) for n, p in trainable if n in keep]


def select_names(names: Sequence[str], selection: str | Sequence[str],
                 frozen: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The names among `names` that a name, prefix or pattern (or a list of them) selects, in
    the order of `names`; raises naming the closest names when an entry selects none."""
    if isinstance(selection, str):
        selection = [selection]
    chosen: set[str] = set()
    for entry in selection:
        if not isinstance(entry, str):
            raise LandscapeError(
                f"params entries must be names or glob patterns (str); got {entry!r}.")
        hits = matches(entry, names)
        if not hits:
            if entry in frozen:
                raise LandscapeError(
                    f"parameter {entry!r} is frozen (requires_grad=False) and cannot be probed; "
                    "unfreeze it or leave it out."
                )
            if is_pattern(entry):
                what = f"matches the pattern {entry!r}"
            else:
                what = f"is named {entry!r} (or starts with {entry + '.'!r})"
            shown = f"; available: {list(names)}" if len(names) <= 12 else ""
            raise LandscapeError(
                f"no trainable parameter {what}; the closest names are "
                f"{closest(entry, names)}{shown}."
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


def blocks(names: Sequence[str], spec: BlockSpec) -> dict[str, list[str]]:
    """Block name -> the parameter names it selects (in model order), for `by={...}`."""
    if not isinstance(spec, Mapping) or not spec:
        raise LandscapeError(
            "by= as a dict must map block names to parameter names or glob patterns, e.g. "
            "{'attention': '*.attn.*', 'mlp': '*.mlp.*'}; got an empty or non-dict value."
        )
    out = {}
    for block, entries in spec.items():
        try:
            out[str(block)] = select_names(names, entries)
        except LandscapeError as e:
            raise LandscapeError(f"block {block!r} of by=: {e}") from None
    return out
