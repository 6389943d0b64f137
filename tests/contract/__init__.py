"""Contract tests: one suite per interface, run against every backend."""
