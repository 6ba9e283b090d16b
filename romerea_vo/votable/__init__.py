"""Table metadata from ``votable_schemas/`` (and, later, the streaming VOTable writer)."""
