import sys

from nanoseg.cli import main

sys.exit(main())
