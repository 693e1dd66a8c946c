"""User errors: a mistake in what the user gave (config value, data file, checkpoint, option), not a bug.

The package raises :class:`UserError` where it validates user input, with a message that says what is
wrong, where (file, line, key, option) and what to do. The command line (``entropy-reg fit``,
``entropy-reg compare``) turns it into one ``entropy-reg: error: ...`` line on stderr and exit status 2,
without a traceback (:func:`exit_on_user_error`); any other exception is a bug and keeps its traceback
(exit 1). ``UserError`` subclasses ``ValueError``, so code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A bad user input; the message names the culprit and the fix. The CLI prints it and exits 2."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (also a ``FileNotFoundError``)."""


class SourceUnavailableError(UserError, OSError):
    """A named source (hub model or dataset) cannot be loaded, e.g. offline (also an ``OSError``)."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def find_user_error(exc: BaseException) -> UserError | None:
    """The first :class:`UserError` in ``exc``'s chain (Lightning and jsonargparse re-raise and wrap)."""
    return next((e for e in exception_chain(exc) if isinstance(e, UserError)), None)


@contextlib.contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Print a :class:`UserError` (anywhere in the exception chain) as ``<prog>: error: ...``; exit 2.

    Other exceptions propagate unchanged (their traceback is what a bug report needs).
    """
    try:
        yield
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        # One line, whatever the message wraps (e.g. a transformers config error quoted inside it).
        print(f"{prog}: error: {' '.join(str(user_error).split())}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None

