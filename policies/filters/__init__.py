"""Filter plugins: each drops endpoints that cannot take a request, with a typed reason (see README.md)."""
