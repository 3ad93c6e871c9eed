"""The playbook engine: pure (a playbook and one execution's events in, decisions out; no I/O)."""
