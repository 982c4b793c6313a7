import sys

from edgekit.apps.chat import main

sys.exit(main())
