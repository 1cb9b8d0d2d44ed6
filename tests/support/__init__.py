"""Real servers and real key material for the test suite (no mocks)."""
