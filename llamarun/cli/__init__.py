"""The `llamarun` command line."""
