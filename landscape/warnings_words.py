"""Warnings caught while a command runs and reported once each, in words, when it ends.

Used by the command line and by the scripts that draw the repository's figures, so that no raw
`RuntimeWarning: ...` line with a file name and a source line reaches their output.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

# Warnings meant for the developers of a dependency, not for the reader of the output.
SILENCED = (DeprecationWarning, PendingDeprecationWarning)


@contextlib.contextmanager
def warnings_in_words(say: Callable[[str], None]) -> Iterator[list[str]]:
    """Catch every warning raised inside the block; when it ends (also by an exception), call
    `say("note: MESSAGE")` once for each distinct message, whitespace collapsed, in the order
    first seen. Deprecation warnings are dropped. Yields the list of distinct messages, filled
    when the block ends."""
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield seen
        finally:
            for w in caught:
                if issubclass(w.category, SILENCED):
                    continue
                text = " ".join(str(w.message).split())
                if text not in seen:
                    seen.append(text)
            for text in seen:
                say(f"note: {text}")
