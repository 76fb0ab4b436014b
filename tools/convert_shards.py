"""Convert legacy shards into mmpool packs: the same as ``mmpool convert``.

python tools/convert_shards.py SRC DST [--format npy|hdf5] [--pack-size 1G] [--workers N]
                               [--allow-nonfinite] [--quiet]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing mmpool: the package lives in the repository root, one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmpool.cli import main  # noqa: E402  (needs the path above)

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
