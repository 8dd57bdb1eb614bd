"""citrus-deploy."""
