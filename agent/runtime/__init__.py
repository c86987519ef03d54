"""The runtime half of the engine: OCI bundles run under conmon + runc."""
