"""``python -m usagewarden``: the command line."""

from usagewarden.cli import main

raise SystemExit(main())
