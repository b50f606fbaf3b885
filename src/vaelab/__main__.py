"""``python -m vaelab``: the ``vaelab`` command, and what torchrun starts on each rank
(``torchrun --nproc-per-node N -m vaelab train ...``)."""
import sys

from .cli import main

sys.exit(main())
