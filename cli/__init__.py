"""The `orch` command line."""
