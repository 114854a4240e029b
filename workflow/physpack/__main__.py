import sys

from physpack.cli import main

sys.exit(main())
