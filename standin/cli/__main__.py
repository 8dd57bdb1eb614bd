"""`python -m standin.cli <pulumi arguments>`: the stand-in CLI's process."""

import sys

from standin.cli.commands import main

sys.exit(main(sys.argv[1:]))
