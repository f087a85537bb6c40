"""``python -m nanoseg.tracking --uri [--raw]``: print the tracking URI."""

from nanoseg.tracking import main

raise SystemExit(main())
