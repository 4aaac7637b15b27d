"""pytest configuration: Hypothesis profiles and the path to the shared strategies.

Profiles: "ci" (loaded when the CI environment variable is set) is derandomized so a
CI run is reproducible, with a moderate example count; "dev" is the default.  Both
turn the deadline off: the first call of a compiled kernel can be slow for reasons
that have nothing to do with the property under test.
"""

import os
import sys

from hypothesis import HealthCheck, settings

# Make tests/strategies.py importable whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
# HYPOTHESIS_PROFILE=thorough: a long search for counter-examples before a release.
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=1500,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
