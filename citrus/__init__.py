"""Rules and errors shared by the Pulumi program, the dynamic provider and the HTTP service."""
