"""`python -m citrus_deploy.standin.cli <pulumi arguments>`: the stand-in CLI's process."""

import sys

from citrus_deploy.standin.cli.commands import main

sys.exit(main(sys.argv[1:]))
