import sys

from kielo.cli import main

sys.exit(main())
