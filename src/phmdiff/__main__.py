import sys

from phmdiff.cli import main

sys.exit(main())
