"""PostgreSQL side of citrus-deploy: the schema, its named statements, and the dynamic provider."""
