"""Models of the datasets_app app (filled in by its issue)."""
