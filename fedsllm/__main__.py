"""`python -m fedsllm` is the `fedsllm` command."""

import sys

from fedsllm.cli import main

sys.exit(main())
