import sys

from quantd.cli import main

sys.exit(main())
