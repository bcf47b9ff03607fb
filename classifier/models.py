"""Models of the classifier app (filled in by its issue)."""
