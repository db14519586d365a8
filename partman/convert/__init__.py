"""`partman convert` and `partman revert`: an online conversion of a table into range partitions."""
