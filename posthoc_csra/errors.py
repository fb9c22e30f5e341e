"""The project's one exception base: errors a user can fix from the message alone.

The CLI turns a ``PosthocCsraError`` into one line naming the bad input and the fix; any other
exception is a bug and keeps its traceback. ``InputError`` also subclasses ``ValueError`` so code
that caught ``ValueError`` keeps working.
"""
from __future__ import annotations


class PosthocCsraError(Exception):
    """Base of every error the user can fix (bad option, missing file, unsupported model...)."""


class InputError(PosthocCsraError, ValueError):
    """A bad option value, spec string or input file; the message names it and says how to fix it."""


class MissingInputError(PosthocCsraError, FileNotFoundError):
    """A file or folder the user named does not exist (or has the wrong layout)."""


def is_out_of_memory(err: BaseException) -> bool:
    """An allocator failure, as Python or torch raises it (``MemoryError``, ``torch.cuda.OutOfMemoryError``, a
    ``RuntimeError`` saying "out of memory" / "can't allocate memory"): the one test ``prepare.memory_guard``
    and the statistics pass's batch halving (``cache.py``) use. Torch-free."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and any(words in text for words in
                                              ("out of memory", "can't allocate memory", "not enough memory")))


__all__ = ["PosthocCsraError", "InputError", "MissingInputError", "is_out_of_memory"]
