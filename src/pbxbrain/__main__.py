"""``python -m pbxbrain``."""

from pbxbrain.cli import main

raise SystemExit(main())
