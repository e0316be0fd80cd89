"""`python -m primer.sweep`: see primer/sweep/submit.py."""

import sys

from primer.sweep.submit import main

sys.argv[0] = "sweep"  # its messages start "sweep: error:", as those of `primer sweep` do
sys.exit(main())
