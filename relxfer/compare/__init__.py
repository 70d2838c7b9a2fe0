"""The compare stage: runs read back from the tracking server into an item-level frame
(frame.py), the statistical analyses (stats/), the text report and the plots."""
