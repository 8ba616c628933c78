"""Loading pickles that hold only plain data (the `refer` toolkit's `refs(<splitBy>).p`).

A pickle can name any importable callable (`os.system`, `builtins.eval`, ...) and have the
loader call it, so an unpickler that resolves globals runs whatever a hostile file asks. The
refer pickles hold only dicts, lists, strings and numbers, which need no globals at all: this
unpickler refuses every global, so nothing in the file can run code.
"""

from __future__ import annotations

import io
import pickle
from typing import Any


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for a global (a class or function): refused, nothing was called."""


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise UnsafePickleError(
            f"Refused to load global {module}.{name}: this file may only hold plain data "
            "(dicts, lists, strings, numbers). It is not a genuine refer annotation file, or it "
            "was tampered with; nothing in it was run."
        )


def loads(data: bytes, *, name: str = "pickle") -> Any:
    """Unpickles `data` (protocols 0–5, Python 2 str as latin-1) refusing every global.

    Raises:
      UnsafePickleError: the pickle names a global; the message says which and `name`.
      pickle.UnpicklingError: the bytes are not a pickle.
    """
    try:
        return _PlainDataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{name}: {e}") from None
    except (EOFError, ValueError, IndexError, KeyError, pickle.UnpicklingError) as e:
        raise pickle.UnpicklingError(f"{name}: not a readable pickle ({e!r}).") from e
