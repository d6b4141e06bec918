"""Image sources for cafe runs."""
