"""One exception type for bad user input, so the CLI can print one line and exit non-zero."""


class NLHFInputError(ValueError):
    """Invalid user input (file, flag or config field); the message names the fix."""
