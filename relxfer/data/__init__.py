"""Benchmark items and how they become text: the item type, the language table, Belebele and
the synthetic set, the held-out split by question id, and the prompt presets."""
