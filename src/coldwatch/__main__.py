"""Allow ``python -m coldwatch``."""

from coldwatch.cli import main

raise SystemExit(main())
