import sys

from tokner.cli import main

sys.exit(main())
