"""Moved to tests/helpers/figure_checks.py; this name stays for tests written before the move."""

from helpers.figure_checks import *  # noqa: F401,F403
