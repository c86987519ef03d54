"""Pure task placement: filters, preferences, spread. No I/O."""
