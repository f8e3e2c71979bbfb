"""govrisk: credit risk for small businesses, sole proprietors and farmers from government records."""

__version__ = "0.1.0"
