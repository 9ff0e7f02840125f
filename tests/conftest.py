"""Shared pytest setup: keep every process offline and quiet."""

import os

from deploy.local_federation import FLOWER_ENV

# Flower's phone-home, update check and per-run dependency install, Ray's usage stats and the
# model hubs are switched off for this process and every process it starts (one list, shared
# with the launcher of real Flower processes).
os.environ.update(FLOWER_ENV)
