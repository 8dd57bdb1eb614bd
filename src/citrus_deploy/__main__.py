"""`python -m citrus_deploy`: the same as the `citrus-deploy` console script."""

import sys

from citrus_deploy.cli import main

sys.exit(main())
