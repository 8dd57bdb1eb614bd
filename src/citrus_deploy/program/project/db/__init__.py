"""The path at which stacks deployed before citrus-deploy was one package name their row
providers (`db.provider`): kept so that their destroy and refresh still find them."""
