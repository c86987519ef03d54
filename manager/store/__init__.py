"""The replicated object store: in-memory tables, transactions, watches."""
