"""The benchmark: the same closed-loop load against a matrix of server configurations.

``python -m bench`` (``make bench``) runs each row of ``bench.matrix`` through the project's
run script, then writes the comparison report and one table of ratios against the naive
row, with each row's share of the host's decode limit (``bench.roofline``).
"""
