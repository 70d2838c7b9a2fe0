"""What a study's design can detect, before it runs (`relxfer plan`; docs/power.md).

- floor        the exact permutation test's smallest possible p for the family gap, and
               whether compare's rule can ever call a family finding
- assumptions  the variance components a power computation assumes, their defaults, --assume
- pilot        the same estimated from a pilot study's items (--from-experiment)
- design       the spec's shape as the analyses see it
- simulate     many studies drawn at once from the assumptions (common random numbers)
- family, paired, slope
               the effect each analysis finds with 80% power, through compare's own
               estimators and rule (relxfer.compare.stats)
- sizing       languages per family or items per language for a stated gap
- report, text, for_spec
               the report, its lines, and the entry point `relxfer plan` calls
"""
