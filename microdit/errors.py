"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits with status 2; so does a
full disk or quota (FULL_DISK), whichever step meets it."""
import errno

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class UserError(Exception):
    """Bad input (a file, a config field, an argument); the message names it and says what was expected."""
