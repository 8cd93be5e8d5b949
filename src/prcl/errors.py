"""Errors a user can cause and fix: the command line prints their message on one line, exit 2."""


class UserError(Exception):
    """A mistake in the user's input (path, config key, value, data file) with a fix in the message."""
