"""Manager components: Raft consensus, the replicated store, the control API."""
