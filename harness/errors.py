"""The one error type users can cause; the CLI prints it as one line and exits 2."""


class HarnessError(Exception):
    """A problem the user can fix: bad recipe, missing file, unknown device, unreachable board."""
