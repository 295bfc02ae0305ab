"""``python -m benchmarks``: see :mod:`benchmarks.cli`."""

import sys

from .runtime import prepare_environment

prepare_environment()  # before NumPy, Numba or PyTorch load their thread pools (see benchmarks.runtime)

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
