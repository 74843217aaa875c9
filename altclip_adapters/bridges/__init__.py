"""Weight bridges between foreign checkpoint layouts and the core."""
