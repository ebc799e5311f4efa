"""Moved to tests/helpers/figure_data.py; this name stays for tests written before the move."""

from helpers.figure_data import *  # noqa: F401,F403
