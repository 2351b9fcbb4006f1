import sys

from sparkiot.cli import main

sys.exit(main())
