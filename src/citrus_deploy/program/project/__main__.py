"""The Pulumi program's entry, as the Python language host runs it: one stack, one server."""

from citrus_deploy.program.main import main

main()
