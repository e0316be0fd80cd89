"""The one exception type for mistakes a user can cause and fix."""


class PrimerError(Exception):
    """A bad input the user can fix: the message is one sentence naming the file, key or value.

    Stage scripts print it without a traceback and exit non-zero.
    """
