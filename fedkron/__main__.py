import sys

from fedkron.cli import main

sys.exit(main())
