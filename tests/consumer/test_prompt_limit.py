"""How many prompts a session runs at once is the provider's offer, checked and capped:
a large offer is capped, never mistaken for 1."""

from __future__ import annotations

import pytest

from proxy_router.consumer.sessions import MAX_TURNS, _prompt_limit


@pytest.mark.parametrize(("offered", "turns"), [
    (1, 1), (8, 8), (MAX_TURNS, MAX_TURNS), (4096, MAX_TURNS),
    (0, 1), (-3, 1), ("8", 1), (True, 1), (None, 1), (2.5, 1)])
def test_the_offer_is_taken_within_bounds(offered: object, turns: int) -> None:
    assert _prompt_limit(offered) == turns
