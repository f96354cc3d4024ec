"""autoresearch: a trustworthy modify -> verify -> keep loop for empirical research on code."""

__version__ = "0.1.0"
