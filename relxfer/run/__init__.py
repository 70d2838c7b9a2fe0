"""The run stage: the study runner (runner.py), one cell's code path (cell.py), cell claims
(claims.py) and the executors that spread cells over processes and machines (executors/)."""
