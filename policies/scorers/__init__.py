"""Scorer plugins: each rates the surviving endpoints in [0, 1], higher is better (see README.md)."""
