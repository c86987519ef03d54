"""The object model of orch: objects, task states, validation and wire codecs."""
