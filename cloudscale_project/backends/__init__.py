"""Database backends of the platform's own (named by ENGINE in settings)."""
