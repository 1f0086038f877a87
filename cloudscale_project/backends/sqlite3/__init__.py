"""Django's SQLite backend with write transactions queued on a lock file (see `base`)."""
