import sys

from dmfuse.cli import main

sys.exit(main())
