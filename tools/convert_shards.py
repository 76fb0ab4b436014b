"""Convert legacy shards into mmpool packs: the same as ``mmpool convert``.

python tools/convert_shards.py SRC DST [--format npy|hdf5] [--pack-size 1G] [--workers N]
                               [--allow-nonfinite] [--quiet]
"""

from __future__ import annotations

import sys

from mmpool.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
