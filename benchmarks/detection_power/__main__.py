"""`python -m benchmarks.detection_power`: run the benchmark (see the package docstring)."""

import sys

from benchmarks.detection_power.cli import main

sys.exit(main())
