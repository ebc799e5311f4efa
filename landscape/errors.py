"""The one exception type that bad input raises."""


class LandscapeError(ValueError):
    """Bad input to a `landscape` function: the message names the problem and the fix."""
