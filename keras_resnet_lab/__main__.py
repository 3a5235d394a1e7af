"""`python -m keras_resnet_lab` is the `keras-resnet-lab` command."""

import sys

from .cli import main

sys.exit(main())
