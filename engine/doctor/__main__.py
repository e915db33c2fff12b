"""`python -m engine.doctor` == `kiln doctor`."""

import sys

from engine.doctor import main

sys.exit(main())
