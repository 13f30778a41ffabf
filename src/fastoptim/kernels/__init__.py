"""Fast backends for the update rules, and the one place that chooses between them."""
