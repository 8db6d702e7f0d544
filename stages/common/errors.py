"""The one exception type stages raise for problems the user can fix (bad input, bad config).

Stage CLIs turn it into a one-paragraph message and exit status 1, without a traceback: the message
itself must name the file, the line where there is one, the reason, and what to do.
"""


class UserError(Exception):
    """A problem with the user's input or configuration, reported without a traceback."""
