import sys

from fraudscore.cli import main

sys.exit(main())
