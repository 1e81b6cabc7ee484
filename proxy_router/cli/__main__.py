"""``python -m proxy_router.cli``: the same as the ``proxy-router`` command."""

import sys

from proxy_router.cli.app import main

sys.exit(main())
