import sys

from prcl.cli import main

sys.exit(main())
