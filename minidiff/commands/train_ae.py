"""``minidiff train-ae``: ``minidiff train`` with ``--preset ae-quick`` as the default
(the KL autoencoder of lesson 09); every option of ``minidiff train`` applies.

    minidiff train-ae                                   # its time: data/checkpoints/ae.md
    minidiff train-ae --preset ae --out runs/ae         # the larger configuration
"""
from __future__ import annotations

import sys

from minidiff.commands import train as cli


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--resume" in argv:     # the run's own configuration (minidiff train --resume)
        return cli.main(argv)
    return cli.main(["--preset", "ae-quick", *argv])   # a later --preset wins


if __name__ == "__main__":
    sys.exit(main())
