"""`python -m primer.sweep`: see primer/sweep/submit.py."""

import sys

from primer.sweep.submit import main

sys.exit(main())
