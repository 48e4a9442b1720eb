"""Shared test settings: Hugging Face offline whatever the environment says
(no model or dataset is ever downloaded by a test), one torch thread unless
the caller chose otherwise, and Hypothesis derandomized (every run draws the
same examples: a property test fails on every run or on none). The caches
tests build into are set where they are used (tests/fedsllm/model/conftest.py,
tests/e2e/conftest.py)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import settings  # noqa: E402 - after the environment it may read

settings.register_profile("fedsllm", derandomize=True)
settings.load_profile("fedsllm")
