"""The pure core: values, rules and decisions. Never imports I/O libraries (a test enforces it)."""
