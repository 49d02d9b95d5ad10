"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input (a file, a config field, an argument); the message names it and says what was expected."""
