"""`python -m infersched.cli`: the `infersched` command without the installed script."""
import sys

from infersched.cli import main

sys.exit(main())
