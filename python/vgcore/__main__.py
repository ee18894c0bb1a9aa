import sys

from vgcore.cli import main

sys.exit(main())
