"""``python -m minidiff ...``: the same as the ``minidiff`` command."""
import sys

from minidiff.commands import main

sys.exit(main())
