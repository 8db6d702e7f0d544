"""Small pieces every stage shares: errors, JSON(L) I/O, provenance, CLI plumbing."""
