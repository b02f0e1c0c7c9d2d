"""``python -m minidiff ...``: the same as the ``minidiff`` command."""
import sys

from minidiff.cli import main

sys.exit(main())
