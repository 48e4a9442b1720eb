"""Shared test settings: Hugging Face offline whatever the environment says
(no model or dataset is ever downloaded by a test), and one torch thread
unless the caller chose otherwise. The caches tests build into are set where
they are used (tests/fedsllm/model/conftest.py, tests/e2e/conftest.py)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
