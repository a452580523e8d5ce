"""fraudscore: the command line and the local platform (the composition root)."""

__version__ = "0.1.0"
