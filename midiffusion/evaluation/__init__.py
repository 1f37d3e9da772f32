"""The benchmark: compared methods, the run over directions, results, reports and figures."""
