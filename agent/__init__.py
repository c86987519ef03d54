"""The node agent and its embedded container engine."""
