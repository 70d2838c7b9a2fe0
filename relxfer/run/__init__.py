"""The run stage: the study runner (runner.py), one cell's code path (cell.py), what a failure
means for the other cells (ledger.py) and its cause in words (failures.py), cell claims
(claims.py) and the executors that spread cells over processes and machines (executors/)."""
