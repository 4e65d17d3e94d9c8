"""Plain functions behind the extra `lightning-fv` commands (edges: files, plots)."""
