"""``python -m mmpool``: the same as the ``mmpool`` console script."""

from mmpool.cli import main

raise SystemExit(main())
