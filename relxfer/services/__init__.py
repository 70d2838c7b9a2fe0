"""Clients and launchers of servers relxfer does not own: an OpenAI-compatible HTTP client,
the vLLM process manager, and the Tinker SDK wrapper. No scoring or training logic lives here."""
