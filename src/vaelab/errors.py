"""The one exception a user's mistake raises.

The CLI catches :class:`VaelabError`, prints its message (one sentence that names the file or
flag and what was expected) and exits with status 2, without a traceback. Everything else is a
bug and keeps its traceback.
"""


class VaelabError(Exception):
    """Bad input from the user: a flag, a file, a shape. The message is shown as is."""
