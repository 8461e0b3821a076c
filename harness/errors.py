"""The one error type users can cause; the CLI prints it as one line and exits 2."""


class HarnessError(Exception):
    """A problem the user can fix: bad recipe, missing file, unknown device, unreachable board."""


def first_line(exc: BaseException | str) -> str:
    """The first line of `exc` (where Python and RPC errors put their reason), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def last_line(exc: BaseException | str) -> str:
    """The last line of `exc` (an exception's message, where TVM puts the check that failed), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
